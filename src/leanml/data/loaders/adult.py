"""UCI Adult income: 14 features (6 numeric, 8 categorical) and the label ``>50K``.

Features in X (float32), in this fixed order:
- the 6 numeric features, standardized with the *train* split's mean and std (so train and test
  use the same transform; the raw values are kept in ``meta``, the statistics in ``info``);
- one-hot columns for the 8 categorical features, over a fixed vocabulary: the values that
  ``adult.names`` lists, in its order, plus ``?``. A missing value (``?`` in the file) is kept as
  its own category ``<feature>=?`` (it occurs in workclass, occupation and native-country), not
  imputed and not dropped, so rows are never lost and missingness stays visible to a model.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from leanml.data.loaders._common import Source, split_ids
from leanml.data.registry import register
from leanml.data.types import DatasetSpec, Split

NAME = "adult"
SOURCE = "https://github.com/jbrownlee/Datasets (commit d20fcb64); originally UCI ML Repository 'Adult'"
ROWS = {"train": 32_561, "test": 16_281}
DIR = "tabular/adult"
FILES = {s: f"{DIR}/adult-{s}.csv" for s in ROWS}
NAMES_FILE = f"{DIR}/adult.names"
FEATURES = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
            "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country"]
NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = [f for f in FEATURES if f not in NUMERIC]
MISSING = "?"
LABELS = {"<=50K": 0, ">50K": 1}
_SRC = Source(NAME, SOURCE)
_EXPECTED = ("CSV without header: 14 comma-separated features (see adult.names) then the label "
             "'<=50K' or '>50K' (a trailing '.' is allowed, as in the test file); '?' marks a missing value")
_NAMES_EXPECTED = "the UCI adult.names file: one 'feature: value, value, ... .' line per feature"


def read_vocabulary(path: Path) -> dict[str, list[str]]:
    """Each categorical feature's values, in the order adult.names lists them, plus '?' last."""
    text = _SRC.read_text(path, _NAMES_EXPECTED)
    vocab: dict[str, list[str]] = {}
    for line in text.split("\n"):
        m = re.match(r"^([a-z-]+):\s*(.+?)\.?\s*$", line)
        if m and m.group(1) in CATEGORICAL:
            vocab[m.group(1)] = [v.strip() for v in m.group(2).split(",")] + [MISSING]
    missing = [f for f in CATEGORICAL if f not in vocab]
    if missing:
        raise _SRC.error(path, f"no value list for categorical feature(s) {missing}", _NAMES_EXPECTED)
    return vocab


def parse_adult(path: Path, vocab: dict[str, list[str]]) -> tuple[dict[str, list], np.ndarray, int]:
    """Raw columns, labels, and how many labels carried a trailing '.' (all validated)."""
    text = _SRC.read_text(path, _EXPECTED)
    cols: dict[str, list] = {f: [] for f in FEATURES}
    labels: list[int] = []
    dotted = 0
    known = {f: set(v) for f, v in vocab.items()}
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("|"):  # blank lines; the original test file's '|1x3 ...' note
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 15:
            raise _SRC.error(path, f"line {lineno} has {len(parts)} comma-separated fields, not 15", _EXPECTED)
        label = parts[14]
        if label.endswith("."):
            label, dotted = label[:-1], dotted + 1
        if label not in LABELS:
            raise _SRC.error(path, f"line {lineno}: label {parts[14]!r} is not <=50K or >50K", _EXPECTED)
        labels.append(LABELS[label])
        for f, v in zip(FEATURES, parts[:14], strict=True):
            if f in known:
                if v not in known[f]:
                    raise _SRC.error(path, f"line {lineno}: {f} value {v!r} is not in adult.names", _EXPECTED)
                cols[f].append(v)
            else:
                try:
                    cols[f].append(int(v))
                except ValueError:
                    raise _SRC.error(path, f"line {lineno}: {f} value {v!r} is not an integer", _EXPECTED) from None
    return cols, np.asarray(labels, dtype=np.int64), dotted


def _numeric_matrix(cols: dict[str, list]) -> np.ndarray:
    return np.column_stack([np.asarray(cols[f], dtype=np.float64) for f in NUMERIC])


def encode_adult(cols: dict[str, list], vocab: dict[str, list[str]], mean: np.ndarray, std: np.ndarray,
                 ) -> tuple[np.ndarray, list[str]]:
    """Standardized numeric columns then one-hot categoricals, as float32, with column names."""
    n = len(cols[FEATURES[0]])
    blocks = [((_numeric_matrix(cols) - mean) / std).astype(np.float32)]
    names = list(NUMERIC)
    for f in CATEGORICAL:
        index = {v: i for i, v in enumerate(vocab[f])}
        codes = np.fromiter((index[v] for v in cols[f]), dtype=np.int64, count=n)
        onehot = np.zeros((n, len(index)), dtype=np.float32)
        onehot[np.arange(n), codes] = 1.0
        blocks.append(onehot)
        names += [f"{f}={v}" for v in vocab[f]]
    return np.hstack(blocks), names


def load_adult(root: Path, split: str) -> Split:
    """One Adult split; id = split base + data-row index in file order (y: 1 = >50K)."""
    vocab = read_vocabulary(root / NAMES_FILE)
    path = root / FILES[split]
    cols, y, dotted = parse_adult(path, vocab)
    _SRC.check_rows(path, split, len(y), ROWS[split])
    # Numeric standardization always uses the train split's statistics.
    if split == "train":
        train_cols = cols
    else:
        train_cols, train_y, _ = parse_adult(root / FILES["train"], vocab)
        _SRC.check_rows(root / FILES["train"], "train", len(train_y), ROWS["train"])
    train_num = _numeric_matrix(train_cols)
    mean, std = train_num.mean(axis=0), train_num.std(axis=0)
    std[std == 0] = 1.0
    X, names = encode_adult(cols, vocab, mean, std)
    meta = {f: (np.asarray(cols[f], dtype=np.int64) if f in NUMERIC else cols[f]) for f in FEATURES}
    info = {
        "feature_names": names, "classes": ["<=50K", ">50K"], "numeric": list(NUMERIC),
        "categorical": {f: list(vocab[f]) for f in CATEGORICAL}, "missing_value": MISSING,
        "numeric_mean": mean.tolist(), "numeric_std": std.tolist(), "labels_with_trailing_dot": dotted,
        "missing_counts": {f: sum(v == MISSING for v in cols[f]) for f in CATEGORICAL},
    }
    return Split(NAME, split, ids=split_ids(split, len(y)), X=X, y=y, meta=meta, info=info)


register(DatasetSpec(
    name=NAME, kind="tabular", description="UCI Adult census income (>50K), numeric + one-hot features",
    splits=dict(ROWS), files=(*FILES.values(), NAMES_FILE), license="CC BY 4.0 (UCI)",
    source=SOURCE, loader=load_adult,
))
