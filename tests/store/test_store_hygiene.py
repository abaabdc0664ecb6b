"""Opening a store for writing (or resuming) removes what a killed writer left: temporary manifests and
shard files no manifest lists. Shown with a writer killed by SIGKILL mid-append, and with leftovers made
directly; no committed row is lost or duplicated."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from leanml.store import GradientStore

SPEC = {"projection": {"type": "dense", "dim": 16, "seed": 0}}
WRITER = """
import sys, numpy as np
from leanml.store import GradientStore
st = GradientStore.create(sys.argv[1], dim=16, spec={"projection": {"type": "dense", "dim": 16, "seed": 0}},
                          model="m", codec="int8")
rng = np.random.default_rng(0)
for b in range(100000):
    ids = np.arange(b * 50, (b + 1) * 50)
    st.append(ids, rng.standard_normal((50, 16)).astype(np.float32))
"""


def _leftovers(root):
    return sorted(p.name for p in root.rglob("*") if p.is_file() and (p.name.endswith(".tmp")
                  or (p.suffix == ".npy" and "shards" in p.parts and str(p.relative_to(root)) not in _listed(root))))


def _listed(root):
    st = GradientStore.open(root)
    return {f for s in st.manifest.shards for f in s.files.values()}


def test_kill9_mid_append_then_reopen_cleans_up(tmp_path):
    root = tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while time.time() - t0 < 60:
        if (root / "manifest.json").exists() and GradientStore.open(root).n_rows() >= 1000:
            break
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    committed = GradientStore.open(root)
    ids_before = committed.ids()
    assert len(ids_before) >= 1000
    # whatever the kill left, plus the leftovers seen in the field, made directly
    (root / ".manifest.json.abc123.tmp").write_text("{partial")
    (root / "shards" / "c0" / "main-999999.codes.npy").write_bytes(b"uncommitted")
    (root / "shards" / "c0" / ".main-999998.ids.npy.xyz.tmp").write_bytes(b"partial")
    other = root / "shards" / "c0" / "w007-000000.codes.npy"  # another part's file: not ours to remove
    other.write_bytes(b"other writer")
    assert len(_leftovers(root)) >= 3
    st = GradientStore.create(root, dim=16, spec=SPEC, model="m", codec="int8")  # reopen for writing
    assert [n for n in _leftovers(root) if not n.startswith("w007")] == []
    assert other.exists()
    np.testing.assert_array_equal(st.ids(), ids_before)  # no committed row lost
    assert st.verify() == []
    n = st.append(np.arange(ids_before.max() + 1 - 50, ids_before.max() + 51), np.ones((100, 16), np.float32))
    assert n == 50 and len(np.unique(st.ids())) == len(st.ids())  # resume skips committed ids, no duplicates
