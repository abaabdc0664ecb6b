"""Each codec round-trips within its stated error; bytes per example as documented."""

import numpy as np
import pytest

from leanml.store import CODECS, get_codec


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 1000)).astype(np.float32) * rng.uniform(0.01, 100, (200, 1)).astype(np.float32)
    x[0] = 0.0  # an all-zero row must survive every codec
    return x


def test_fp32_exact(rows):
    c, a = get_codec("fp32").encode(rows)
    np.testing.assert_array_equal(get_codec("fp32").decode(c, a, 1000), rows)


@pytest.mark.parametrize("name,rel", [("fp16", 2.0**-11), ("bf16", 2.0**-8)])
def test_float_codecs_relative_error(rows, name, rel):
    codec = get_codec(name)
    c, a = codec.encode(rows)
    back = codec.decode(c, a, rows.shape[1])
    err = np.abs(back - rows)
    # relative bound per element in the normal range (fp16 subnormals below 6e-5 get an absolute bound)
    bound = rel * np.abs(rows) + (6.2e-5 * 2.0**-10 if name == "fp16" else 0.0)
    assert np.all(err <= bound * 1.0000001)


def test_int8_absolute_error(rows):
    codec = get_codec("int8")
    c, a = codec.encode(rows)
    back = codec.decode(c, a, rows.shape[1])
    bound = np.abs(rows).max(1, keepdims=True) / 254.0
    assert np.all(np.abs(back - rows) <= bound * 1.0001 + 1e-12)
    assert c.dtype == np.int8 and a.dtype == np.float32


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
    assert got == {"fp32": 4 * d, "fp16": 2 * d, "bf16": 2 * d, "int8": d + 4, "sign1": d // 8 + 4}
    assert got["fp32"] / got["int8"] > 3.99
    with pytest.raises(ValueError, match="codec must be one of"):
        get_codec("int4")
