"""`leanml store query` with a TOML spec, with flags, --explain, and its errors."""

import json

import numpy as np
from typer.testing import CliRunner

from leanml.cli.main import app

runner = CliRunner()


def test_query_cli(digits_store, digits_feats, tmp_path):
    _, X = digits_feats
    np.save(tmp_path / "q.npy", X[:2])
    spec = tmp_path / "q.toml"
    spec.write_text('[[step]]\nop = "where"\nsql = "u < 0.2"\n\n[[step]]\nop = "nearest"\nqueries = "q.npy"\n'
                    'k = 4\n\n[[step]]\nop = "join"\ntable = "metadata"\non = "id"\n')
    path = str(digits_store.root)
    r = runner.invoke(app, ["store", "query", path, "--steps", str(spec)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_rows"] == 8 and "label" in out["columns"] and all(row["u"] < 0.2 for row in out["rows"])
    r = runner.invoke(app, ["store", "query", path, "--steps", str(spec), "--explain"])
    assert r.exit_code == 0 and "nearest[exact" in r.stdout and "predicted" in r.stdout
    r = runner.invoke(app, ["store", "query", path, "--where", "label = 2", "--nearest", str(tmp_path / "q.npy"),
                            "--k", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_rows"] == 6
    r = runner.invoke(app, ["store", "query", path, "--where", "nope > 1", "--nearest", str(tmp_path / "q.npy")])
    assert r.exit_code == 2 and "step 1 where" in r.output and "unknown column" in r.output
    r = runner.invoke(app, ["store", "query", path, "--nearest", str(tmp_path / "q.npy"), "--k", "0"])
    assert r.exit_code == 2 and "k must be" in r.output
