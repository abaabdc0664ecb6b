"""SmolLM2-135M-Instruct + LoRA through the same interface: batched features equal a batch-1 reference loop."""

import pytest
import torch

pytestmark = [pytest.mark.llm, pytest.mark.slow]


def test_smollm2_lora_factorized_matches_naive():
    pytest.importorskip("peft")
    from leanml.data import load
    from leanml.grads import CausalLMLoss, GradientComputer
    from leanml.models.text import encode_completions, load_smollm2_lora

    model, tok = load_smollm2_lora(rank=4, targets=("q_proj", "v_proj"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    recs = load("t0", "train").records[:3]
    b = encode_completions(tok, [r["prompt"] for r in recs], [r["completion"] for r in recs], max_len=48)
    gc = GradientComputer(model, CausalLMLoss(), params="lora", projector="factorized", dim=256, seed=0)
    feats = gc.features(b)
    grads = gc.per_example_grads(b)
    pm = dict(model.named_parameters())
    for i in range(3):
        model.zero_grad(set_to_none=True)
        one = {k: v[i : i + 1] for k, v in b.items()}
        CausalLMLoss().loss(model, one).sum().backward()
        ref = torch.cat([pm[n].grad.reshape(-1) for n in gc.names])
        torch.testing.assert_close(torch.cat([g[i] for g in grads]), ref, rtol=1e-3, atol=1e-6)
        cols = []
        for name in gc.projector.layers:
            cols.append(gc.projector.reference(name, pm[f"{name}.weight"].grad))
        want = gc.projector.combine([c[None] for c in cols])[0]
        torch.testing.assert_close(feats[i], want, rtol=1e-3, atol=1e-5)
