"""The store's manifest: the single commit point. Shards and tasks exist for readers once listed here."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leanml.io import atomic_write_text

FORMAT = "leanml-gradstore"
VERSION = 2  # 2: per-row 1 - p per checkpoint ("q" shard files) when ``one_minus_p``
READS = (1, 2)  # version 1 stores hold no 1 - p and open with one_minus_p False
MANIFEST = "manifest.json"


class StoreError(Exception):
    """A store problem the user must act on (mismatch, corruption, missing file)."""


class StoreMismatchError(StoreError):
    """Features from a different model, projection or dimension than the store holds."""


@dataclass
class Checkpoint:
    name: str
    weight: float = 1.0
    fingerprint: str | None = None  # hash of the weights the features were computed with


@dataclass
class Shard:
    checkpoint: str
    part: str
    seq: int
    rows: int
    files: dict[str, str]  # role (codes, aux, ids) -> path relative to the store
    sha256: dict[str, str]


@dataclass
class Manifest:
    dim: int
    codec: str
    spec: dict[str, Any]  # projection spec (with seed), parameter subset, loss
    model: str  # architecture fingerprint
    grad_type: str = "sgd"
    checkpoints: list[Checkpoint] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    one_minus_p: bool = False  # every shard also holds each row's 1 - p(label) (TRAK's Q), role "q"
    generation: int = 0
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreError(f"{where}: not valid JSON ({e}); the store may be damaged") from None
        if d.get("format") != FORMAT:
            raise StoreError(f"{where}: not a leanml gradient store (format {d.get('format')!r})")
        if d.get("version") not in READS:
            raise StoreError(f"{where}: store format version {d.get('version')}, this leanml reads {READS}")
        d["checkpoints"] = [Checkpoint(**c) for c in d["checkpoints"]]
        d["shards"] = [Shard(**s) for s in d["shards"]]
        m = cls(**d)
        lacking = [s.files["codes"] for s in m.shards if m.one_minus_p and "q" not in s.files]
        if lacking:
            raise StoreError(f"{where}: the manifest says every shard holds 1 - p, but {len(lacking)} do not "
                             f"(e.g. {lacking[0]}); the store is damaged: re-extract those rows")
        return m

    def checkpoint(self, name: str) -> Checkpoint:
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise StoreError(f"store has no checkpoint {name!r}; it has {[c.name for c in self.checkpoints]}")

    def shards_of(self, checkpoint: str) -> list[Shard]:
        return sorted((s for s in self.shards if s.checkpoint == checkpoint), key=lambda s: (s.part, s.seq))


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(path: Path) -> Manifest:
    if not path.exists():
        raise StoreError(f"{path}: no manifest; create the store with GradientStore.create(...) first")
    return Manifest.from_json(path.read_text(), str(path))


def write_manifest(path: Path, m: Manifest) -> None:
    atomic_write_text(path, m.to_json())


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Exclusive lock for a manifest read-modify-write (several writers, one machine or a shared POSIX fs)."""
    fd = open(root / ".lock", "a+")  # noqa: SIM115
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        fd.close()
