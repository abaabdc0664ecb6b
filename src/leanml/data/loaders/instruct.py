"""Instruction-tuning pools: T0/P3 prompted mix, GSM8K, Code Alpaca (text records)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from leanml.data.loaders._common import Source, column, split_ids
from leanml.data.registry import register
from leanml.data.types import DatasetSpec, Split

# ---------------------------------------------------------------------------------------------- T0
T0_SOURCE = ("https://github.com/yizhongw/self-instruct (commit 0b26ccaa, "
             "data/finetuning/t0_train_50k/data_per_template/; per-template files concatenated)")
T0_FILE = "instruct/t0/t0_train_50k.jsonl.gz"
T0_ROWS = 55_185
T0_EOS = "<|endoftext|>"
_T0 = Source("t0", T0_SOURCE)
_T0_EXPECTED = 'gzipped JSONL, one {"prompt", "completion", "source"} object (all strings) per line'


def load_t0(root: Path, split: str) -> Split:
    """T0 train mix; id = line index in the gzipped JSONL; the trailing EOS marker is stripped."""
    path = root / T0_FILE
    rows = _T0.read_jsonl(path, _T0_EXPECTED, ("prompt", "completion", "source"))
    _T0.check_rows(path, split, len(rows), T0_ROWS)
    records = [
        {"prompt": r["prompt"], "completion": r["completion"].removesuffix(T0_EOS), "source": r["source"]}
        for r in rows
    ]
    return Split("t0", split, ids=split_ids(split, len(records)), records=records,
                 meta={"source": column(records, "source")},
                 info={"stripped_suffix": T0_EOS, "n_templates": len(set(column(records, "source")))})


register(DatasetSpec(
    name="t0", kind="instruct",
    description="T0/P3 prompted training mix (prompt templates over many source datasets)",
    splits={"train": T0_ROWS}, files=(T0_FILE,), license="Apache-2.0",
    source=T0_SOURCE, loader=load_t0,
))

# ------------------------------------------------------------------------------------------- GSM8K
GSM8K_SOURCE = "https://github.com/openai/grade-school-math (commit 3101c7d5, grade_school_math/data/)"
GSM8K_ROWS = {"train": 7_473, "test": 1_319}
GSM8K_FILES = {s: f"instruct/gsm8k/{s}.jsonl" for s in GSM8K_ROWS}
_GSM = Source("gsm8k", GSM8K_SOURCE)
_GSM_EXPECTED = 'JSONL, one {"question", "answer"} object per line; the answer ends with "#### <number>"'
_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def gsm8k_final(answer: str) -> str | None:
    """The final answer after ``####``, thousands separators removed (``"1,080"`` -> ``"1080"``)."""
    m = _FINAL.search(answer)
    return m.group(1).replace(",", "") if m else None


def load_gsm8k(root: Path, split: str) -> Split:
    """One GSM8K split; id = split base + line index; ``final`` parsed from the ``####`` line."""
    path = root / GSM8K_FILES[split]
    rows = _GSM.read_jsonl(path, _GSM_EXPECTED, ("question", "answer"))
    records = []
    for i, r in enumerate(rows):
        final = gsm8k_final(r["answer"])
        if final is None:
            raise _GSM.error(path, f"record {i}: the answer has no '#### <final answer>' line", _GSM_EXPECTED)
        records.append({"question": r["question"], "answer": r["answer"], "final": final})
    _GSM.check_rows(path, split, len(records), GSM8K_ROWS[split])
    return Split("gsm8k", split, ids=split_ids(split, len(records)), records=records)


register(DatasetSpec(
    name="gsm8k", kind="instruct", description="GSM8K grade-school math word problems",
    splits=dict(GSM8K_ROWS), files=tuple(GSM8K_FILES.values()), license="MIT",
    source=GSM8K_SOURCE, loader=load_gsm8k,
))

# -------------------------------------------------------------------------------------- Code Alpaca
CODEALPACA_SOURCE = "https://github.com/sahil280114/codealpaca (commit 2f78ddc5, data/code_alpaca_2k.json)"
CODEALPACA_FILE = "instruct/codealpaca/code_alpaca_2k.json"
CODEALPACA_ROWS = 2_017
_CA = Source("codealpaca", CODEALPACA_SOURCE)
_CA_EXPECTED = 'a JSON list of {"instruction", "input", "output"} objects (all strings)'


def load_codealpaca(root: Path, split: str) -> Split:
    """Code Alpaca 2k; id = position in the JSON list."""
    path = root / CODEALPACA_FILE
    data = _CA.read_json(path, _CA_EXPECTED)
    if not isinstance(data, list):
        raise _CA.error(path, f"top level is a {type(data).__name__}, not a list", _CA_EXPECTED)
    keys = ("instruction", "input", "output")
    records = [
        {k: _CA.check_record(path, r, keys, _CA_EXPECTED, where=f"item {i}")[k] for k in keys}
        for i, r in enumerate(data)
    ]
    _CA.check_rows(path, split, len(records), CODEALPACA_ROWS)
    return Split("codealpaca", split, ids=split_ids(split, len(records)), records=records,
                 meta={"has_input": np.array([bool(r["input"]) for r in records])})


register(DatasetSpec(
    name="codealpaca", kind="instruct", description="Code Alpaca code instructions (2k sample)",
    splits={"train": CODEALPACA_ROWS}, files=(CODEALPACA_FILE,), license="CC BY-NC 4.0",
    source=CODEALPACA_SOURCE, loader=load_codealpaca,
))
