"""SST-2 sentence sentiment (GLUE), as TSV files ``sentence<TAB>label``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leanml.data.loaders._common import Source, split_ids
from leanml.data.registry import register
from leanml.data.types import DatasetSpec, Split

NAME = "sst2"
SOURCE = "https://github.com/forest-snow/alps (commit 3c7ef2c9, data/SST-2/)"
ROWS = {"train": 60_614, "dev": 6_735, "test": 872}
FILES = {s: f"text/sst2/{s}.tsv" for s in ROWS}
_EXPECTED = "UTF-8 TSV with header 'sentence\\tlabel', then one 'sentence\\t0|1' row per line"
_SRC = Source(NAME, SOURCE)


def parse_sst2(path: Path) -> tuple[list[str], np.ndarray]:
    """Sentences and 0/1 labels of one SST-2 TSV file, in file order."""
    lines = _SRC.read_text(path, _EXPECTED).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0].rstrip("\r") != "sentence\tlabel":
        got = repr(lines[0][:80]) if lines else "an empty file"
        raise _SRC.error(path, f"bad header: {got}", _EXPECTED)
    texts: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 2:
            raise _SRC.error(path, f"line {lineno} has {len(parts)} tab-separated fields, not 2", _EXPECTED)
        if parts[1] not in ("0", "1"):
            raise _SRC.error(path, f"line {lineno}: label {parts[1]!r} is not 0 or 1", _EXPECTED)
        texts.append(parts[0].strip())
        labels.append(int(parts[1]))
    return texts, np.asarray(labels, dtype=np.int64)


def load_sst2(root: Path, split: str) -> Split:
    """One SST-2 split; id = split base + line index after the header."""
    path = root / FILES[split]
    texts, y = parse_sst2(path)
    _SRC.check_rows(path, split, len(texts), ROWS[split])
    records = [{"text": t, "label": int(lab)} for t, lab in zip(texts, y, strict=True)]
    return Split(NAME, split, ids=split_ids(split, len(y)), y=y, records=records,
                 info={"classes": ["negative", "positive"], "source_file": str(path)})


register(DatasetSpec(
    name=NAME, kind="text",
    description="SST-2 movie-review sentence sentiment (GLUE); 'test' is the GLUE dev set",
    splits=dict(ROWS), files=tuple(FILES.values()), license="MIT (repository)",
    source=SOURCE, loader=load_sst2,
))
