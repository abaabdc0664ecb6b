"""Dense and factorized projections keep each query's top-10 neighbours of the exact per-example gradients.

Neighbours by cosine among training examples, for held-out queries; overlap = |top10(projected) ∩ top10(exact)| / 10.
Measured: digits MLP (2-epoch warm-up, 600 train / 50 test, k=256): dense 0.92, factorized 0.77.
SST-2 MiniLM-L6 + LoRA r8 (128 train / 16 dev, k=1024): dense 0.84, factorized 0.71 (two-stage).
Floors asserted below leave room for the smaller sample in the MiniLM test.
"""

import numpy as np
import pytest
import torch

from leanml.data import load
from leanml.grads import ClassificationLoss, GradientComputer
from leanml.models import build_mlp, fit


def _top(A, B, k=10):
    return (torch.nn.functional.normalize(B, dim=1) @ torch.nn.functional.normalize(A, dim=1).T).topk(k, dim=1).indices


def _overlap(a, b):
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def test_digits_neighbours_preserved():
    s, t = load("digits", "train"), load("digits", "test")
    model = build_mlp(64, 10, hidden=(64,))
    fit(model, s.X, s.y, epochs=2)
    tr = {"x": torch.as_tensor(s.X[:600], dtype=torch.float32), "y": torch.as_tensor(s.y[:600])}
    q = {"x": torch.as_tensor(t.X[:50], dtype=torch.float32), "y": torch.as_tensor(t.y[:50])}
    floors = {"dense": 0.85, "factorized": 0.75}
    exact = None
    for proj, floor in floors.items():
        gc = GradientComputer(model, ClassificationLoss(), projector=proj, dim=256, seed=0)
        if exact is None:
            exact = _top(torch.cat(gc.per_example_grads(tr), 1), torch.cat(gc.per_example_grads(q), 1))
        assert _overlap(exact, _top(gc.features(tr), gc.features(q))) >= floor, proj


@pytest.mark.llm
@pytest.mark.slow
def test_sst2_minilm_lora_neighbours_preserved():
    pytest.importorskip("peft")
    from leanml.models.text import encode_texts, load_minilm_lora, train_steps

    model, tok = load_minilm_lora(rank=8, seed=0)
    tr, dev = load("sst2", "train"), load("sst2", "dev")

    def batch(s, a, b):
        return encode_texts(tok, [r["text"] for r in s.records[a:b]], s.y[a:b], 32)
    loss = ClassificationLoss()
    train_steps(model, lambda m, b: loss.loss(m, b).mean(), (batch(tr, 1000 + 16 * i, 1016 + 16 * i) for i in range(3)),
                lr=2e-3)
    pool, queries = [batch(tr, a, a + 32) for a in (0, 32)], batch(dev, 0, 10)
    gd = GradientComputer(model, loss, params="lora", projector="dense", dim=1024, seed=0)
    gf = GradientComputer(model, loss, params="lora", projector="factorized", dim=1024, seed=0)
    full = torch.cat([torch.cat(gd.per_example_grads(b), 1) for b in pool])
    exact = _top(full, torch.cat(gd.per_example_grads(queries), 1))
    dense = _top(torch.cat([gd.features(b) for b in pool]), gd.features(queries))
    fact = _top(torch.cat([gf.features(b) for b in pool]), gf.features(queries))
    assert _overlap(exact, dense) >= 0.65
    assert _overlap(exact, fact) >= 0.6
