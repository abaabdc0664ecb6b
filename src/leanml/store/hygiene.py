"""Store hygiene: what a writer killed mid-append leaves behind, found and removed on resume.

A killed writer can leave temporary manifests (``.manifest.json.*.tmp``), a temporary part manifest, and
shard files (or their temporaries) that no manifest lists. None of them is committed data, so removing them
never loses a row; `GradientStore.remove_uncommitted` calls these under the right lock.
"""

from __future__ import annotations

from pathlib import Path

from leanml.store.manifest import MANIFEST, Manifest, Shard


def merged_shards(mine: Manifest, committed: Manifest) -> list[Shard]:
    """Shards listed by this writer's view or by the committed manifest (a file either lists is kept)."""
    return mine.shards + [s for s in committed.shards if s not in mine.shards]


def remove_temp_manifests(root: Path) -> list[Path]:
    """Delete the store's temporary manifests; call under the manifest lock."""
    removed = list(root.glob(f".{MANIFEST}.*.tmp"))
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def remove_unlisted_part_files(root: Path, part: str, listed: set[Path]) -> list[Path]:
    """Delete ``part``'s temporary part manifest and its shard files (and temporaries) not in ``listed``."""
    removed: list[Path] = []
    if (root / "parts").exists():
        removed += list((root / "parts").glob(f".{part}.json.*.tmp"))
    if (root / "shards").exists():
        removed += [p for p in (root / "shards").glob(f"*/{part}-*") if p not in listed]
        removed += list((root / "shards").glob(f"*/.{part}-*.tmp"))
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
