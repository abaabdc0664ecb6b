"""Every file-backed loader on the real files: row counts, shapes, label sets, stable unique ids."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from leanml.data import get_spec, load
from leanml.data.types import SPLIT_BASE

# Row counts as the data README states (azure: the README says 8,818; the file has 8,819 data rows).
EXPECTED_ROWS = {
    ("sst2", "train"): 60_614, ("sst2", "dev"): 6_735, ("sst2", "test"): 872,
    ("t0", "train"): 55_185,
    ("gsm8k", "train"): 7_473, ("gsm8k", "test"): 1_319,
    ("codealpaca", "train"): 2_017,
    ("bbh", "test"): 6_511,
    ("mmlu", "dev"): 285, ("mmlu", "test"): 14_042,
    ("tydiqa", "dev"): 5_077,
    ("adult", "train"): 32_561, ("adult", "test"): 16_281,
    ("azure_llm_code", "trace"): 8_819,
}
TEXT_KEYS = {
    "sst2": {"text", "label"}, "t0": {"prompt", "completion", "source"},
    "gsm8k": {"question", "answer", "final"}, "codealpaca": {"instruction", "input", "output"},
    "bbh": {"input", "target", "task"}, "mmlu": {"question", "choices", "answer", "subject"},
    "tydiqa": {"id", "question", "context", "answers", "language"},
}
_FIRST: dict[tuple[str, str], str] = {}
_LOADED: dict[tuple[str, str], object] = {}


def _load_once(name: str, split: str):
    """One shared load per split for the read-only checks below (loads are seconds, not free)."""
    if (name, split) not in _LOADED:
        _LOADED[(name, split)] = load(name, split)
    return _LOADED[(name, split)]


def _fingerprint(split) -> str:
    """A digest of ids and content, to compare two loads."""
    h = hashlib.sha256(split.ids.tobytes())
    for arr in (split.X, split.y):
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    if split.records is not None:
        h.update(json.dumps(split.records, sort_keys=True).encode())
    for k in sorted(split.meta):
        h.update(np.asarray(split.meta[k]).tobytes() if isinstance(split.meta[k], np.ndarray)
                 else json.dumps(list(split.meta[k])).encode())
    return h.hexdigest()


@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED_ROWS))
def test_rows_ids_and_records(real_root: Path, name: str, split: str) -> None:
    s = _load_once(name, split)
    assert len(s) == EXPECTED_ROWS[(name, split)] == get_spec(name).splits[split]
    assert s.dataset == name and s.split == split
    assert s.ids.dtype == np.int64 and len(np.unique(s.ids)) == len(s)
    assert s.ids[0] == SPLIT_BASE[split] and np.all(np.diff(s.ids) == 1)
    if name in TEXT_KEYS:
        assert s.records is not None and all(set(r) == TEXT_KEYS[name] for r in s.records)
    _FIRST[(name, split)] = _fingerprint(s)


@pytest.mark.parametrize(("name", "split"), [("sst2", "dev"), ("gsm8k", "test"), ("bbh", "test"),
                                             ("mmlu", "dev"), ("tydiqa", "dev"), ("adult", "test"),
                                             ("codealpaca", "train"), ("azure_llm_code", "trace")])
def test_second_load_is_identical(real_root: Path, name: str, split: str) -> None:
    first = _FIRST.get((name, split)) or _fingerprint(load(name, split))
    assert _fingerprint(load(name, split)) == first


def test_sst2_labels_and_text(real_root: Path) -> None:
    s = _load_once("sst2", "test")
    assert set(s.y.tolist()) == {0, 1} and s.y.dtype == np.int64
    assert [r["label"] for r in s.records] == s.y.tolist()
    assert s.records[0]["text"] == "it 's a charming and often affecting journey ."


def test_t0_sources_and_stripped_eos(real_root: Path) -> None:
    s = _load_once("t0", "train")
    assert s.meta["source"] == [r["source"] for r in s.records]
    assert 200 < len(set(s.meta["source"])) <= 294
    assert not any(r["completion"].endswith("<|endoftext|>") for r in s.records)
    assert s.records[0]["completion"] == "subjective idealism"


def test_gsm8k_final_answers(real_root: Path) -> None:
    s = _load_once("gsm8k", "train")
    assert s.records[0]["final"] == "72"
    assert all(r["final"].lstrip("-").replace(".", "", 1).isdigit() for r in s.records)


def test_bbh_tasks(real_root: Path) -> None:
    s = _load_once("bbh", "test")
    tasks = s.info["tasks"]
    assert len(tasks) == 27 and "boolean_expressions" in tasks and "word_sorting" in tasks
    counts = {t: s.meta["task"].count(t) for t in tasks}
    assert max(counts.values()) <= 250
    assert s.records[0] == {"input": "not ( True ) and ( True ) is", "target": "False",
                            "task": "boolean_expressions"}


@pytest.mark.parametrize("split", ["dev", "test"])
def test_mmlu_answers_and_subjects(real_root: Path, split: str) -> None:
    s = _load_once("mmlu", split)
    assert set(s.y.tolist()) == {0, 1, 2, 3}
    assert len(s.info["subjects"]) == 57
    assert all(len(r["choices"]) == 4 and all(isinstance(c, str) for c in r["choices"]) for r in s.records)
    assert s.meta["subject"][0] == "abstract_algebra"


def test_tydiqa_languages(real_root: Path) -> None:
    s = _load_once("tydiqa", "dev")
    assert s.info["languages"] == ["arabic", "bengali", "english", "finnish", "indonesian", "korean",
                                   "russian", "swahili", "telugu"]
    assert s.meta["language"].count("english") == 440
    assert all(r["answers"] and all(a in r["context"] for a in r["answers"]) for r in s.records[:500])


def test_adult_features(real_root: Path) -> None:
    tr, te = _load_once("adult", "train"), _load_once("adult", "test")
    assert tr.X.dtype == np.float32 and tr.X.shape[1] == te.X.shape[1] == len(tr.info["feature_names"])
    assert tr.info["feature_names"] == te.info["feature_names"]
    assert set(tr.y.tolist()) == set(te.y.tolist()) == {0, 1}
    assert int(tr.y.sum()) == 7_841 and int(te.y.sum()) == 3_846  # '>50K' rows (test ones end with '.')
    assert te.info["labels_with_trailing_dot"] == len(te) and tr.info["labels_with_trailing_dot"] == 0
    # one-hot blocks: exactly one 1 per categorical feature per row, '?' kept as its own category
    names = tr.info["feature_names"]
    for feat in tr.info["categorical"]:
        cols = [i for i, n in enumerate(names) if n.startswith(feat + "=")]
        assert np.all(tr.X[:, cols].sum(axis=1) == 1)
    q = names.index("workclass=?")
    assert int(tr.X[:, q].sum()) == tr.info["missing_counts"]["workclass"] == 1_836
    # numeric columns standardized with train statistics; raw values kept in meta
    assert np.allclose(tr.X[:, :6].mean(axis=0), 0, atol=1e-4)
    assert tr.meta["age"][0] == 39 and tr.meta["workclass"][0] == "State-gov"
    mean, std = te.info["numeric_mean"][0], te.info["numeric_std"][0]
    assert te.X[0, 0] == pytest.approx((25 - mean) / std, rel=1e-5)


def test_azure_trace_exact_timestamps(real_root: Path) -> None:
    s = _load_once("azure_llm_code", "trace")
    assert s.X is None and s.info["start"] == "2023-11-16T18:17:03.9799600"
    t = s.meta["timestamp_s"]
    assert t.dtype == np.float64 and t[0] == 0.0 and np.all(np.diff(t) >= 0)
    ns = s.meta["timestamp_ns"]
    assert ns[1] == 52_000_000 and ns[-1] == 3_435_948_056_000  # 18:17:04.0319600 and 19:14:19.9280160
    assert s.meta["context_tokens"].dtype == np.int64 and s.meta["context_tokens"][0] == 4808
    assert s.meta["generated_tokens"][-1] == 173


def test_env_var_is_honoured(real_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "instruct" / "codealpaca").mkdir(parents=True)
    src = real_root / "instruct" / "codealpaca" / "code_alpaca_2k.json"
    (tmp_path / "instruct" / "codealpaca" / "code_alpaca_2k.json").write_bytes(src.read_bytes())
    monkeypatch.setenv("LEANML_DATA", str(tmp_path))
    s = load("codealpaca", "train")
    assert len(s) == 2_017
    monkeypatch.setenv("LEANML_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(Exception, match="data root does not exist"):
        load("codealpaca", "train")
