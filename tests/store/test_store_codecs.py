"""Codec contract, over every registered codec: round trip within its stated error, codes as promised, bytes per
row as documented; plus what each lossy codec keeps (signs and norm for sign1)."""

import itertools

import numpy as np
import pytest

from leanml.store import CODECS, Codec, get_codec


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 1001)).astype(np.float32) * rng.uniform(0.01, 100, (200, 1)).astype(np.float32)
    x[0] = 0.0  # an all-zero row must survive every codec
    x[1, :70] = 0.0  # an all-zero block (int2 scales per block of 64)
    x[2] = rng.standard_t(2, 1001).astype(np.float32)  # heavy tails: one large element per row sets absmax
    return x


@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_contract(rows, name):
    codec = get_codec(name)
    assert isinstance(codec, Codec) and codec.name == name
    codes, aux = codec.encode(rows)
    assert codes.ndim == 2 and len(codes) == len(rows)
    assert (aux is not None) == codec.has_aux
    if aux is not None:
        assert aux.dtype == np.float32 and len(aux) == len(rows)
    per_row = codes.nbytes // len(rows) + (0 if aux is None else aux.nbytes // len(rows))
    assert per_row == codec.bytes_per_row(rows.shape[1])
    back = codec.decode(codes, aux, rows.shape[1])
    assert back.dtype == np.float32 and back.shape == rows.shape
    bound = codec.error_bound(rows)
    assert np.all(np.abs(back.astype(np.float64) - rows) <= bound), f"{name}: round trip beyond its stated error"
    if name != "sign1":
        np.testing.assert_array_equal(back[0], 0.0)
    # a block of rows decodes the same as the whole (the store decodes slices of memmapped shards)
    np.testing.assert_array_equal(codec.decode(codes[5:9], None if aux is None else aux[5:9], rows.shape[1]),
                                  back[5:9])
    # decoding into a reused, larger buffer gives the same values, in its first rows
    buf = np.full((12, rows.shape[1]), np.nan, np.float32)
    got = codec.decode_into(codes[5:9], None if aux is None else aux[5:9], rows.shape[1], buf)
    assert got.shape == (4, rows.shape[1]) and np.shares_memory(got, buf)
    np.testing.assert_array_equal(got, back[5:9])


@pytest.mark.parametrize("name", ["int8", "int4", "int2"])
def test_integer_codecs_use_their_levels(rows, name):
    """The bound is tight: the largest element of each row is exact; errors reach near the stated bound."""
    codec = get_codec(name)
    codes, aux = codec.encode(rows[3:])
    back = codec.decode(codes, aux, rows.shape[1])
    i = np.abs(rows[3:]).argmax(1)
    np.testing.assert_allclose(back[np.arange(len(i)), i], rows[3:][np.arange(len(i)), i], rtol=1e-5)
    err = np.abs(back - rows[3:]) / codec.error_bound(rows[3:])
    assert err.max() > 0.9


def test_sign_keeps_signs_and_norm(rows):
    codec = get_codec("sign1")
    c, a = codec.encode(rows)
    back = codec.decode(c, a, rows.shape[1])
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), np.linalg.norm(rows, axis=1), rtol=1e-5)
    nz = rows != 0
    assert np.all(np.sign(back[nz]) == np.sign(rows[nz]))
    # stated cosine: ||x||_1 / (sqrt(d) ||x||_2)
    r = rows[1:]
    cos = (back[1:] * r).sum(1) / (np.linalg.norm(back[1:], axis=1) * np.linalg.norm(r, axis=1))
    np.testing.assert_allclose(cos, np.abs(r).sum(1) / (np.sqrt(r.shape[1]) * np.linalg.norm(r, axis=1)), rtol=1e-5)


def test_bytes_per_row():
    d = 8192
    got = {n: c.bytes_per_row(d) for n, c in CODECS.items()}
    assert got == {"fp32": 4 * d, "fp16": 2 * d, "bf16": 2 * d, "int8": d + 4, "int4": d // 2 + 4,
                   "int2": d // 4 + 4 * d // 64, "sign1": d // 8 + 4}
    assert (got["fp32"] + 8) / (got["int4"] + 8) > 7.5  # ids included: the int4 target
    with pytest.raises(ValueError, match="codec must be one of"):
        get_codec("int3")


@pytest.mark.parametrize("name", sorted(CODECS))
def test_store_reads_back_what_the_codec_decodes(rows, name, tmp_path):
    from leanml.store import GradientStore

    codec = get_codec(name)
    st = GradientStore.create(tmp_path / name, dim=rows.shape[1], codec=name, spec={"projection": {}}, model="m")
    st.append(np.arange(120), rows[:120])
    st.append(np.arange(120, 200), rows[120:])
    _, back = GradientStore.open(st.root).features()
    np.testing.assert_array_equal(back, codec.decode(*codec.encode(rows), rows.shape[1]))
    assert st.verify() == []


@pytest.mark.parametrize("name", sorted(CODECS))
def test_scan_blocks_stay_within_the_decode_cap_and_lose_no_row(name, tmp_path):
    """Every codec that writes a new float32 block caps it at DECODE_BLOCK_BYTES whatever block_rows asks
    (larger blocks came from fresh mmap pages each time); fp32 views pass block_rows through; the blocks
    still hold every row once, in order, in the store and in the query layer's view of it."""
    from leanml.store import GradientStore
    from leanml.store.codecs import DECODE_BLOCK_BYTES
    from leanml.store.query.source import RowView, as_source

    d = 4096  # 256 rows of float32 fill the 4 MiB cap
    x = np.random.default_rng(0).standard_normal((2500, d)).astype(np.float32)
    st = GradientStore.create(tmp_path / name, dim=d, codec=name, spec={"projection": {}}, model="m")
    st.append(np.arange(2500), x)
    codec = get_codec(name)
    want = 2000 if codec.decodes_in_place else DECODE_BLOCK_BYTES // (4 * d)
    assert codec.block_rows(2000, d) == want
    views = (st, RowView(as_source(st)), RowView(as_source(st), np.arange(0, 2500, 2)))
    for view, n in zip(views, (2500, 2500, 1250), strict=True):
        blocks = list(view.iter_blocks(None, 2000))
        assert max(len(b[0]) for b in blocks) == min(want, n)
        ids = np.concatenate([b[0] for b in blocks])
        assert len(ids) == n and (np.diff(ids) > 0).all()


@pytest.mark.parametrize("name", sorted(CODECS))
def test_blocks_decoded_into_a_reused_buffer_equal_fresh_ones(name, tmp_path):
    """``iter_blocks(reuse=True)`` (what `search.scan` asks for) yields the same ids and rows, block by block,
    as fresh decoding, in the store, in the query layer's whole view and in a gathered subset of it."""
    from leanml.store import GradientStore
    from leanml.store.query.source import RowView, as_source

    d = 4096
    x = np.random.default_rng(1).standard_normal((700, d)).astype(np.float32)
    st = GradientStore.create(tmp_path / name, dim=d, codec=name, spec={"projection": {}}, model="m")
    st.append(np.arange(300), x[:300])
    st.append(np.arange(300, 700), x[300:])  # two shards: a gathered block spans both
    pos = np.arange(5, 700, 2)  # 348 rows: more than one 256-row block
    for view in (st, RowView(as_source(st)), RowView(as_source(st), pos)):
        fresh = [(i.copy(), r.copy()) for i, r in view.iter_blocks(None, 2000)]
        reused = [(i.copy(), r.copy()) for i, r in view.iter_blocks(None, 2000, reuse=True)]
        assert len(fresh) == len(reused) > (0 if get_codec(name).decodes_in_place else 1)
        for (fi, fr), (ri, rr) in zip(fresh, reused, strict=True):
            np.testing.assert_array_equal(fi, ri)
            np.testing.assert_array_equal(fr, rr)
        if not get_codec(name).decodes_in_place:  # and the buffer really is one: every block in the same memory
            raw = [r for _, r in view.iter_blocks(None, 2000, reuse=True)]
            assert all(np.shares_memory(a, b) for a, b in itertools.pairwise(raw))
