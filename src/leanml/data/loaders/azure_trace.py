"""Azure LLM inference trace (coding service, one hour on 2023-11-16): arrivals and token counts.

Timestamps such as ``2023-11-16 18:17:03.9799600`` carry 7 fractional digits (100 ns ticks), more
than :mod:`datetime` keeps, so they are parsed exactly as integer nanoseconds; ``timestamp_s`` is
float64 seconds since the first request (ample precision over one hour). The trace must be sorted
by time (non-decreasing); a file that goes back in time is rejected, naming the line.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from leanml.data.loaders._common import Source, split_ids
from leanml.data.registry import register
from leanml.data.types import DatasetSpec, Split

NAME = "azure_llm_code"
SOURCE = "https://github.com/Azure/AzurePublicDataset (commit b469a113, data/AzureLLMInferenceTrace_code.csv)"
FILE = "traces/azure_llm_2023_code.csv"
ROWS = 8_819  # the data README says 8,818; the published file has 8,819 data rows
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
_SRC = Source(NAME, SOURCE)
_EXPECTED = (f"CSV with header '{HEADER}', rows like '2023-11-16 18:17:03.9799600,4808,10' "
             "sorted by time")
_ROW = re.compile(r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?,(\d+),(\d+)")


def parse_timestamp_ns(date: str, clock: str, frac: str | None) -> int:
    """Exact nanoseconds since the Unix epoch (the trace gives no zone; read as UTC)."""
    whole = np.datetime64(f"{date}T{clock}", "s").astype(np.int64)
    return int(whole) * 1_000_000_000 + int((frac or "").ljust(9, "0"))


def parse_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Arrival times (ns since epoch), context and generated tokens, and the first time as text."""
    lines = _SRC.read_text(path, _EXPECTED).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip().lstrip("\ufeff") != HEADER:
        raise _SRC.error(path, f"bad header: {lines[0][:80]!r}" if lines else "empty file", _EXPECTED)
    ts, ctx, gen = [], [], []
    start = ""
    for lineno, line in enumerate(lines[1:], 2):
        m = _ROW.fullmatch(line.strip())
        if m is None:
            raise _SRC.error(path, f"line {lineno} is malformed: {line[:80]!r}", _EXPECTED)
        date, clock, frac, c, g = m.groups()
        try:
            t = parse_timestamp_ns(date, clock, frac)
        except ValueError as e:  # e.g. month 13
            raise _SRC.error(path, f"line {lineno}: invalid date/time ({e})", _EXPECTED) from None
        if ts and t < ts[-1]:
            raise _SRC.error(path, f"line {lineno}: timestamp goes back in time (trace not sorted)", _EXPECTED)
        if not ts:
            start = f"{date}T{clock}" + (f".{frac}" if frac else "")
        ts.append(t)
        ctx.append(int(c))
        gen.append(int(g))
    return (np.asarray(ts, dtype=np.int64), np.asarray(ctx, dtype=np.int64),
            np.asarray(gen, dtype=np.int64), start)


def load_azure_trace(root: Path, split: str) -> Split:
    """The whole trace; id = row index in file (= arrival) order."""
    path = root / FILE
    ts_ns, ctx, gen, start = parse_trace(path)
    _SRC.check_rows(path, split, len(ts_ns), ROWS)
    rel_ns = ts_ns - ts_ns[0]
    meta = {"timestamp_s": rel_ns / 1e9, "timestamp_ns": rel_ns,
            "context_tokens": ctx, "generated_tokens": gen}
    info = {"start": start, "duration_s": float(rel_ns[-1]) / 1e9, "sorted": True,
            "timezone": "not stated by the trace (read as UTC)", "source_file": str(path)}
    return Split(NAME, split, ids=split_ids(split, len(ts_ns)), meta=meta, info=info)


register(DatasetSpec(
    name=NAME, kind="trace", description="Azure LLM inference trace, code service, 1 hour (2023-11-16)",
    splits={"trace": ROWS}, files=(FILE,), license="CC-BY 4.0",
    source=SOURCE, loader=load_azure_trace,
))
