"""Evaluation / target task sets: BIG-Bench Hard, MMLU, TyDiQA-GoldP (text records)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from leanml.data.loaders._common import Source, column, split_ids
from leanml.data.registry import register
from leanml.data.types import DatasetSpec, Split

# --------------------------------------------------------------------------------------------- BBH
BBH_SOURCE = "https://github.com/suzgunmirac/BIG-Bench-Hard (commit 9ee07bd4, bbh/)"
BBH_DIR = "instruct/bbh"
BBH_ROWS = 6_511
BBH_TASKS = 27
_BBH = Source("bbh", BBH_SOURCE)
_BBH_EXPECTED = f'{BBH_TASKS} files <task>.json, each {{"examples": [{{"input", "target"}}, ...]}} (strings)'


def load_bbh(root: Path, split: str) -> Split:
    """All BBH tasks; id = split base + index over sorted task files, then example order."""
    files = _BBH.require_glob(root / BBH_DIR, "*.json", _BBH_EXPECTED)
    if len(files) != BBH_TASKS:
        raise _BBH.error(root / BBH_DIR, f"found {len(files)} task files, expected {BBH_TASKS}", _BBH_EXPECTED)
    records: list[dict[str, Any]] = []
    for path in files:
        data = _BBH.read_json(path, _BBH_EXPECTED)
        examples = data.get("examples") if isinstance(data, dict) else None
        if not isinstance(examples, list) or not examples:
            raise _BBH.error(path, "no non-empty 'examples' list at the top level", _BBH_EXPECTED)
        for i, ex in enumerate(examples):
            _BBH.check_record(path, ex, ("input", "target"), _BBH_EXPECTED, where=f"example {i}")
            records.append({"input": ex["input"], "target": ex["target"], "task": path.stem})
    _BBH.check_rows(root / BBH_DIR, split, len(records), BBH_ROWS)
    tasks = column(records, "task")
    return Split("bbh", split, ids=split_ids(split, len(records)), records=records,
                 meta={"task": tasks}, info={"tasks": sorted(set(tasks))})


register(DatasetSpec(
    name="bbh", kind="instruct", description="BIG-Bench Hard: 27 reasoning tasks (<= 250 examples each)",
    splits={"test": BBH_ROWS}, files=(BBH_DIR,), license="MIT",
    source=BBH_SOURCE, loader=load_bbh,
))

# -------------------------------------------------------------------------------------------- MMLU
MMLU_SOURCE = "https://github.com/HaeChan0305/MLILAB-FedLLM (commit d92730e8, data/mmlu/)"
MMLU_ROWS = {"dev": 285, "test": 14_042}
MMLU_SUBJECTS = 57
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
_MMLU = Source("mmlu", MMLU_SOURCE)


def _mmlu_expected(split: str) -> str:
    return (f"{MMLU_SUBJECTS} CSV files instruct/mmlu/{split}/<subject>_{split}.csv with header "
            f"{','.join(MMLU_HEADER)} and an integer answer 0-3")


def parse_mmlu_csv(path: Path, subject: str, expected: str) -> list[dict[str, Any]]:
    """Rows of one MMLU subject file, validated: 6 columns, answer in 0..3."""
    text = _MMLU.read_text(path, expected)
    with _MMLU.parsing(path, expected):
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    if not rows or rows[0] != MMLU_HEADER:
        raise _MMLU.error(path, f"bad header: {rows[0] if rows else 'empty file'}", expected)
    out = []
    for i, row in enumerate(rows[1:], 2):
        if len(row) != 6:
            raise _MMLU.error(path, f"CSV row {i} has {len(row)} columns, not 6", expected)
        if row[5].strip() not in ("0", "1", "2", "3"):
            raise _MMLU.error(path, f"CSV row {i}: answer {row[5]!r} is not an integer 0-3", expected)
        out.append({"question": row[0], "choices": row[1:5], "answer": int(row[5]), "subject": subject})
    return out


def load_mmlu(root: Path, split: str) -> Split:
    """One MMLU split; id = split base + index over sorted subject files, then row order."""
    expected = _mmlu_expected(split)
    folder = root / "instruct" / "mmlu" / split
    files = _MMLU.require_glob(folder, f"*_{split}.csv", expected)
    if len(files) != MMLU_SUBJECTS:
        raise _MMLU.error(folder, f"found {len(files)} subject files, expected {MMLU_SUBJECTS}", expected)
    records: list[dict[str, Any]] = []
    for path in files:
        records += parse_mmlu_csv(path, path.name.removesuffix(f"_{split}.csv"), expected)
    _MMLU.check_rows(folder, split, len(records), MMLU_ROWS[split])
    subjects = column(records, "subject")
    return Split("mmlu", split, ids=split_ids(split, len(records)), records=records,
                 y=np.array(column(records, "answer"), dtype=np.int64),
                 meta={"subject": subjects}, info={"subjects": sorted(set(subjects))})


register(DatasetSpec(
    name="mmlu", kind="instruct", description="MMLU multiple choice, 57 subjects",
    splits=dict(MMLU_ROWS), files=("instruct/mmlu/dev", "instruct/mmlu/test"), license="MIT (MMLU)",
    source=MMLU_SOURCE, loader=load_mmlu,
))

# ------------------------------------------------------------------------------------------ TyDiQA
TYDIQA_SOURCE = "https://github.com/sagorbrur/tydiqa-language-specific (commit 55c66494, language_data/)"
TYDIQA_DIR = "instruct/tydiqa"
TYDIQA_ROWS = 5_077
TYDIQA_LANGUAGES = 9
_TY = Source("tydiqa", TYDIQA_SOURCE)
_TY_EXPECTED = (f"{TYDIQA_LANGUAGES} files <language>_tydiqa_dev.json, SQuAD-style "
                '{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text"}]}]}]}]}')


def _tydiqa_file(path: Path, language: str) -> list[dict[str, Any]]:
    data = _TY.read_json(path, _TY_EXPECTED)
    out: list[dict[str, Any]] = []
    with _TY.parsing(path, _TY_EXPECTED):
        for a, article in enumerate(data["data"]):
            for p, para in enumerate(article["paragraphs"]):
                context = para["context"]
                if not isinstance(context, str):
                    raise TypeError(f"data[{a}].paragraphs[{p}].context is not a string")
                for q in para["qas"]:
                    answers = [ans["text"] for ans in q["answers"]]
                    if not all(isinstance(t, str) for t in answers) or not isinstance(q["question"], str):
                        raise TypeError(f"question {q.get('id')!r}: question/answers are not strings")
                    out.append({"id": str(q["id"]), "question": q["question"], "context": context,
                                "answers": answers, "language": language})
    return out


def load_tydiqa(root: Path, split: str) -> Split:
    """TyDiQA-GoldP dev; id = split base + index over sorted language files, then article/paragraph/question."""
    files = _TY.require_glob(root / TYDIQA_DIR, "*_tydiqa_dev.json", _TY_EXPECTED)
    if len(files) != TYDIQA_LANGUAGES:
        raise _TY.error(root / TYDIQA_DIR, f"found {len(files)} language files, expected {TYDIQA_LANGUAGES}",
                        _TY_EXPECTED)
    records: list[dict[str, Any]] = []
    for path in files:
        records += _tydiqa_file(path, path.name.removesuffix("_tydiqa_dev.json"))
    _TY.check_rows(root / TYDIQA_DIR, split, len(records), TYDIQA_ROWS)
    langs = column(records, "language")
    return Split("tydiqa", split, ids=split_ids(split, len(records)), records=records,
                 meta={"language": langs}, info={"languages": sorted(set(langs))})


register(DatasetSpec(
    name="tydiqa", kind="instruct", description="TyDiQA-GoldP dev, 9 languages (extractive QA)",
    splits={"dev": TYDIQA_ROWS}, files=(TYDIQA_DIR,), license="Apache-2.0",
    source=TYDIQA_SOURCE, loader=load_tydiqa,
))
