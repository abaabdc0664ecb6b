"""Trace loaders: every registered format loads its sample without flags and rejects a malformed file by column.

The contract test is generated from the registry: a loader registered under ``name`` must ship
``fixtures/<name>.csv`` or ``.jsonl`` (and, for a loader that needs a field map, ``<name>.fields.json``);
test ids are ``<k>of<n>-<name>``, so the output counts the loaders covered. Real traces from the data
root are loaded too where present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leanml.data.root import data_root
from leanml.serve.workload.loaders import TraceFields, TraceLoader, read_trace_file, trace_loaders
from leanml.serve.workload.traces import TraceError, load_trace

FIXTURES = Path(__file__).parent / "fixtures"
LOADERS = trace_loaders()
IDS = [f"{k}of{len(LOADERS)}-{n}" for k, n in enumerate(LOADERS, 1)]


def _sample(name: str) -> tuple[Path, TraceFields | None]:
    files = [p for p in FIXTURES.glob(f"{name}.*") if p.suffix in (".csv", ".jsonl")]
    assert len(files) == 1, f"loader {name!r} has no sample under {FIXTURES} (add {name}.csv or {name}.jsonl)"
    spec = FIXTURES / f"{name}.fields.json"
    return files[0], TraceFields(**json.loads(spec.read_text())) if spec.exists() else None


def _corrupt(path: Path, column: str, value: str, out: Path) -> Path:
    """``path`` with row 2's ``column`` set to ``value`` (CSV or JSONL)."""
    lines = path.read_text().splitlines()
    if path.suffix == ".jsonl":
        row = json.loads(lines[1])
        row[column] = value
        lines[1] = json.dumps(row)
    else:
        header = lines[0].split(",")
        cells = lines[2].split(",")
        cells[header.index(column)] = value
        lines[2] = ",".join(cells)
    out.write_text("\n".join(lines) + "\n")
    return out


def _drop(path: Path, column: str, out: Path) -> Path:
    lines = path.read_text().splitlines()
    if path.suffix == ".jsonl":
        rows = [json.loads(x) for x in lines]
        for r in rows:
            r.pop(column)
        out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        j = lines[0].split(",").index(column)
        out.write_text("\n".join(",".join(c for i, c in enumerate(x.split(",")) if i != j) for x in lines) + "\n")
    return out


def test_the_public_formats_are_registered():
    assert {"azure_llm", "mooncake", "burstgpt", "fields"} <= set(LOADERS)
    assert all(isinstance(ld, TraceLoader) for ld in LOADERS.values())


@pytest.mark.parametrize("name", list(LOADERS), ids=IDS)
def test_loader_contract(name, tmp_path):
    loader = LOADERS[name]
    path, fields = _sample(name)
    n_rows = sum(1 for x in path.read_text().splitlines() if x.strip()) - (path.suffix != ".jsonl")
    tr = read_trace_file(path, fields=fields)  # no format flag: its columns say which (or its field map)
    assert tr.info["format"] == name and len(tr) == n_rows
    assert tr.arrival_s[0] == 0.0 and np.all(np.diff(tr.arrival_s) >= 0) and tr.duration_s > 0
    assert tr.context_tokens is not None and tr.generated_tokens is not None
    assert tr.context_tokens.dtype == np.int64 and tr.context_tokens.min() >= 0
    ts = (fields or loader.fields).timestamp
    for col, bad in ((ts, "soon"), ((fields or loader.fields).context, "-3")):
        with pytest.raises(TraceError, match=f"column '{col}'"):
            read_trace_file(_corrupt(path, col, bad, tmp_path / f"bad{path.suffix}"), fields=fields)
    if fields is None:  # a missing column: the format's name and the column say what is wrong
        dropped = _drop(path, ts, tmp_path / f"short{path.suffix}")
        with pytest.raises(TraceError, match=rf"needs column\(s\) \['{ts}'\]"):
            read_trace_file(dropped, format=name)
        with pytest.raises(TraceError, match="match no known trace format"):
            read_trace_file(dropped)


def test_each_format_keeps_its_time_unit():
    moon = read_trace_file(FIXTURES / "mooncake.jsonl")
    np.testing.assert_allclose(moon.arrival_s, [0, 0, 2.71, 2.71, 4.125])  # ms -> s
    assert moon.extra["hash_ids"][4] == [37, 38]
    burst = read_trace_file(FIXTURES / "burstgpt.csv")
    np.testing.assert_allclose(burst.arrival_s, [0, 40, 113, 135, 188])  # s
    assert burst.generated_tokens.tolist() == [18, 251, 276, 0, 408]
    azure = read_trace_file(FIXTURES / "azure_llm.csv")  # 2024 stamps carry +00:00
    np.testing.assert_allclose(azure.arrival_s, [0, 0.25459, 1.082231, 1.082231, 3.507074], atol=1e-6)
    assert "Azure" in azure.info["format_note"]


AZURE_2023 = data_root() / "traces" / "azure_llm_2023_code.csv"


@pytest.mark.skipif(not AZURE_2023.exists(), reason="Azure trace not under the data root ($LEANML_DATA)")
def test_the_real_azure_2023_trace_loads_without_flags():
    tr = load_trace(AZURE_2023)
    assert tr.info["format"] == "azure_llm" and len(tr) == 8819 and 3000 < tr.duration_s < 3700


def test_cli_describe_loads_a_mooncake_file_without_flags_and_says_which_format():
    from typer.testing import CliRunner

    from leanml.cli.workload_cmd import app

    res = CliRunner().invoke(app, ["describe", str(FIXTURES / "mooncake.jsonl")])
    assert res.exit_code == 0, res.output
    assert "trace format: mooncake" in " ".join(res.output.split())
