"""CIFAR-10 from its JPEG tar: a small fake tar (decode, order, cache, corruption) and the real one."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanml.data import DatasetError, load
from leanml.data.loaders import cifar10

COLORS = {"cat": (200, 30, 30), "airplane": (20, 40, 220), "truck": (30, 180, 60)}


def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _make_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _fake_members() -> dict[str, bytes]:
    # deliberately not in sorted order inside the tar
    m = {}
    for split, n in (("test", 1), ("train", 2)):
        for cls in ("truck", "cat", "airplane"):
            for i in reversed(range(n)):
                m[f"{split}/{cls}/{i:04d}.jpg"] = _jpeg(COLORS[cls])
    return m


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding a 9-image fake CIFAR tar, a private cache folder, and matching row counts."""
    root = tmp_path / "data"
    _make_tar(root / cifar10.FILE, _fake_members())
    monkeypatch.setenv("LEANML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10, "ROWS", {"train": 6, "test": 3})
    return root


def test_fake_tar_decodes_in_canonical_order(fake_root: Path) -> None:
    decoded, classes = cifar10.read_cifar10_tar(fake_root / cifar10.FILE, progress=False)
    assert classes == ["airplane", "cat", "truck"]
    X, y, names = decoded["train"]
    assert names == sorted(names) and names[0] == "train/airplane/0000.jpg"
    assert X.shape == (6, 3, 32, 32) and X.dtype == np.uint8
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    for row, label in zip(X, y, strict=True):
        mean_rgb = row.reshape(3, -1).mean(axis=1)
        assert np.allclose(mean_rgb, COLORS[classes[label]], atol=4)  # JPEG is lossy, solid colours nearly exact


def test_fake_tar_through_registry_and_cache(fake_root: Path, tmp_path: Path, monkeypatch) -> None:
    s = load("cifar10", "train", root=fake_root)
    assert s.X.shape == (6, 3, 32, 32) and s.X.dtype == np.float32
    assert s.X.min() >= 0.0 and s.X.max() <= 1.0
    assert s.ids.tolist() == list(range(6)) and s.info["classes"] == ["airplane", "cat", "truck"]
    t = load("cifar10", "test", root=fake_root)
    assert t.ids.tolist() == [2_000_000_000, 2_000_000_001, 2_000_000_002] and t.y.tolist() == [0, 1, 2]
    manifests = list((tmp_path / "cache" / "cifar10").glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["splits"]["train"]["rows"] == 6

    # A second load reads the cache: the tar is not decoded again.
    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(cifar10, "read_cifar10_tar", no_decode)
    again = load("cifar10", "train", root=fake_root)
    assert np.array_equal(again.X, s.X) and np.array_equal(again.ids, s.ids)

    # A cache with a wrong shape is not trusted: it is decoded again.
    np.save(manifests[0].parent / "train_x.npy", np.zeros((5, 3, 32, 32), np.uint8))
    monkeypatch.undo()
    monkeypatch.setenv("LEANML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10, "ROWS", {"train": 6, "test": 3})
    calls = []
    real = cifar10.read_cifar10_tar
    monkeypatch.setattr(cifar10, "read_cifar10_tar", lambda *a, **k: calls.append(1) or real(*a, **k))
    fixed = load("cifar10", "train", root=fake_root)
    assert calls == [1] and np.array_equal(fixed.X, s.X)


def test_limit_keeps_classes_balanced_and_ids(fake_root: Path) -> None:
    s = cifar10.load_cifar10(fake_root, "train", limit=3, progress=False)
    assert s.y.tolist() == [0, 1, 2] and s.ids.tolist() == [1, 3, 5]
    with pytest.raises(ValueError, match="limit"):
        cifar10.load_cifar10(fake_root, "train", limit=0, progress=False)


def test_row_count_mismatch(fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cifar10, "ROWS", {"train": 50_000, "test": 10_000})
    with pytest.raises(DatasetError, match=r"split 'train' has 6 rows, expected 50,000"):
        load("cifar10", "train", root=fake_root)


@pytest.mark.parametrize(("bad_member", "data", "message"), [
    ("train/cat/0001.jpg", _jpeg(COLORS["cat"])[:200], r"cannot decode JPEG"),
    ("train/cat/0001.jpg", b"not a jpeg at all", r"cannot decode JPEG"),
    ("train/cat/0001.jpg", _jpeg(COLORS["cat"], size=64), r"64x64, not 32x32"),
])
def test_corrupted_jpeg_names_the_member(fake_root: Path, bad_member: str, data: bytes, message: str) -> None:
    members = _fake_members()
    members[bad_member] = data
    tar = _make_tar(fake_root / cifar10.FILE, members)
    with pytest.raises(DatasetError, match=message) as info:
        load("cifar10", "train", root=fake_root)
    assert f"{tar}::{bad_member}" in str(info.value)
    assert not list((fake_root.parent / "cache" / "cifar10").glob("*/manifest.json"))  # nothing cached


def test_truncated_tar(fake_root: Path) -> None:
    tar = fake_root / cifar10.FILE
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(DatasetError, match=r"truncated") as info:
        load("cifar10", "test", root=fake_root)
    assert str(tar) in str(info.value)


def test_not_a_tar(fake_root: Path) -> None:
    (fake_root / cifar10.FILE).write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(DatasetError, match=r"truncated or corrupted tar"):
        load("cifar10", "test", root=fake_root)


def test_real_tar(real_root: Path) -> None:
    """The real tar; the first run on a machine decodes all 60,000 JPEGs once, later runs read the cache."""
    s = load("cifar10", "test")
    assert s.X.shape == (10_000, 3, 32, 32) and s.X.dtype == np.float32
    assert float(s.X.min()) >= 0.0 and float(s.X.max()) <= 1.0 and 0.3 < float(s.X.mean()) < 0.6
    assert s.info["classes"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                 "ship", "truck"]
    assert np.bincount(s.y).tolist() == [1_000] * 10
    assert s.ids[0] == 2_000_000_000 and len(np.unique(s.ids)) == 10_000
    assert s.meta["file"][0] == "test/airplane/0000.jpg" and s.meta["file"][-1] == "test/truck/0999.jpg"
    sub = cifar10.load_cifar10(real_root, "train", limit=500, progress=False)
    assert sub.X.shape == (500, 3, 32, 32) and np.bincount(sub.y).tolist() == [50] * 10
    again = cifar10.load_cifar10(real_root, "train", limit=500, progress=False)
    assert np.array_equal(again.ids, sub.ids) and np.array_equal(again.X, sub.X)


def test_unwritable_cache_still_loads(fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LEANML_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not write the decode cache"):
        s = load("cifar10", "test", root=fake_root)
    assert s.X.shape == (3, 3, 32, 32) and s.y.tolist() == [0, 1, 2]
