"""On real features (digits MLP after warm-up, Adam-type training gradients, SGD test gradients, k=2048),
LESS top-5% selections from int8, int4 and 1-bit stores overlap the fp32 selection above stated floors.

Measured on this data: int8 1.00, int4 0.94, 1-bit 0.70 (1-bit overlap grows with k: 0.46 at k=512, 0.82 at 8192).
Floors asserted: int8 >= 0.9 (issue 3's target), int4 >= 0.9 (issue 17's), 1-bit >= 0.6.
"""

import numpy as np
import pytest
import torch

from leanml.grads.recipes import ExtractSpec, warmup
from leanml.store import GradientStore
from leanml.store.extract import extract

FLOORS = {"int8": 0.9, "int4": 0.9, "sign1": 0.6}


@pytest.mark.slow
def test_quantized_selection_overlap(tmp_path):
    spec = ExtractSpec(dataset="digits", model="mlp", projector="dense", dim=2048, batch_size=256, hidden=(64,),
                       grad_type="adam")
    spec = warmup(spec, tmp_path / "ck", epochs=2)
    tspec = ExtractSpec(**{**spec.__dict__, "split": "test", "grad_type": "sgd", "limit": 100})
    model, _ = tspec.build_model()
    target = np.stack([torch.cat([gc.features(b) for _, b in tspec.batches()]).numpy()
                       for _, _, gc in tspec.computers(model)])
    ref = extract(spec, tmp_path / "fp32", codec="fp32")
    sel = {}
    for codec in ("fp32", "int8", "int4", "sign1"):
        st = ref
        if codec != "fp32":  # same features, re-encoded: the codec is what is under test
            m = ref.manifest
            st = GradientStore.create(tmp_path / codec, dim=m.dim, codec=codec, spec=m.spec, model=m.model,
                                      grad_type=m.grad_type, checkpoints=[(c.name, c.weight) for c in m.checkpoints])
            for c in st.checkpoint_names():
                st.append(*ref.features(c), checkpoint=c)
        st.add_task("digits-test", target)
        ids, _ = st.select("digits-test", 0.05)
        sel[codec] = set(ids.tolist())
    n = len(sel["fp32"])
    assert n == round(0.05 * 1348)
    for codec, floor in FLOORS.items():
        assert len(sel[codec] & sel["fp32"]) / n >= floor, codec
