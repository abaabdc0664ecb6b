"""`leanml grads extract` and `leanml store info|verify|search|explain` end to end on digits."""

import json

import numpy as np
from typer.testing import CliRunner

from leanml.cli.main import app
from leanml.store import GradientStore

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())  # Rich wraps long lines


def test_extract_then_query(tmp_path):
    out = tmp_path / "s"
    r = runner.invoke(app, ["grads", "extract", "-d", "digits", "-o", str(out), "--limit", "120", "--dim", "64",
                            "--batch-size", "40", "--codec", "int8", "--warmup-epochs", "1", "--grad-type", "adam",
                            "--projector", "dense"])
    assert r.exit_code == 0, r.output
    st = GradientStore.open(out)
    assert st.n_rows() == 120 and st.manifest.grad_type == "adam" and st.manifest.codec == "int8"
    st.add_task("self", np.stack([st.features(c)[1][:3] for c in st.checkpoint_names()]), ids=st.ids()[:3].tolist())
    r = runner.invoke(app, ["store", "info", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["checkpoints"][0]["rows"] == 120
    r = runner.invoke(app, ["store", "verify", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["store", "search", str(out), "--task", "self", "--row", "1", "--k", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ids"][0][0] == int(st.ids()[1])
    r = runner.invoke(app, ["store", "explain", str(out), "--task", "self", "--row", "0", "--k", "2"])
    assert r.exit_code == 0 and "label" in r.output
    r = runner.invoke(app, ["store", "search", str(out)])
    assert r.exit_code == 2 and "exactly one of" in _flat(r.output)
    r = runner.invoke(app, ["store", "info", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such store" in _flat(r.output)
    # a second extraction with another projection seed into the same store is refused, with the reason
    r = runner.invoke(app, ["grads", "extract", "-d", "digits", "-o", str(out), "--limit", "120", "--dim", "64",
                            "--seed", "1", "--projector", "dense"])
    assert r.exit_code == 2 and "differs from the store" in _flat(r.output)
