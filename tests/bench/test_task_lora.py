"""The task LoRA for serving: the instruct learner trains it, merging keeps its function, the cache round-trips."""

from __future__ import annotations

import pytest
import torch

from leanml.bench.task_lora import LoraRecipe, cached_task_lora, task_data


def test_recipe_validates_and_names_the_parameter():
    with pytest.raises(ValueError, match="task"):
        LoraRecipe(task="mmlu")
    with pytest.raises(ValueError, match="n_train"):
        LoraRecipe(n_train=0)
    with pytest.raises(ValueError, match="lr"):
        LoraRecipe(lr=0.0)
    assert LoraRecipe(seed=1).key() != LoraRecipe(seed=2).key()


def test_task_data_is_disjoint_and_real():
    records, items = task_data(LoraRecipe(n_train=6), n_eval=4)
    assert len(records) == 6 and len(items) == 4
    assert {r["prompt"] for r in records}.isdisjoint({i["prompt"] for i in items})
    assert all(r["prompt"].endswith("\nAnswer:") and r["completion"].startswith(" ") for r in records)
    with pytest.raises(ValueError, match="english"):
        task_data(LoraRecipe(language="klingon"), n_eval=1)


@pytest.mark.slow
def test_training_lowers_the_task_loss_and_the_merged_model_computes_the_same_function(tmp_path):
    """Two epochs on 4 TyDiQA examples at a high learning rate: the completion loss on them falls (the learner
    trains the adapters, not the frozen base); folding the adapters into the weights changes no logit beyond
    float rounding; a second build with the same recipe loads the cached adapters instead of training."""
    from leanml.grads import CausalLMLoss
    from leanml.models.text import encode_completions

    recipe = LoraRecipe(n_train=4, epochs=2, lr=3e-3, max_len=96, seed=3)
    records, _ = task_data(recipe, n_eval=1)
    model, tok, report = cached_task_lora(recipe, records, cache=tmp_path)
    assert "cached" not in report and len(report["losses"]) == 2 and report["cost"]["wall_s"] > 0
    batch = encode_completions(tok, [r["prompt"] for r in records], [r["completion"] for r in records], 96)
    with torch.no_grad():
        after = float(CausalLMLoss().loss(model, batch).mean())
        with model.disable_adapter():
            before = float(CausalLMLoss().loss(model, batch).mean())
    assert after < 0.8 * before
    from leanml.models.text import merge_lora

    m = merge_lora(model)
    x = batch["input_ids"][:1, :32]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, m(input_ids=x).logits, atol=1e-3)
    again, _, rep2 = cached_task_lora(recipe, records, cache=tmp_path)
    assert rep2["cached"] == report["adapter"]
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    loaded = {n: p for n, p in again.named_parameters() if p.requires_grad}
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[n], loaded[n]) for n in trained)
