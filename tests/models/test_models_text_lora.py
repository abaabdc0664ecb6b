"""LoRA adapter files: saved with their config, loaded back into the same function, merged without change."""

from __future__ import annotations

import copy

import pytest
import torch

from leanml.models.text import LLAMA_LORA_TARGETS, _lora, lora_from_adapter, merge_lora, save_lora_adapter


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def trained_like(base):
    """``base`` wrapped with rank-4 LoRA whose B matrices are non-zero (peft starts them at zero)."""
    m = _lora(base, 4, None, LLAMA_LORA_TARGETS, 0)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return m.eval()


def test_an_adapter_file_round_trips_and_merging_keeps_the_function(tmp_path):
    base = tiny_llama()
    fresh = copy.deepcopy(base)
    peft = trained_like(base)
    path = save_lora_adapter(peft, tmp_path / "a.safetensors")
    x = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        want = peft(input_ids=x).logits
        assert not torch.allclose(want, fresh(input_ids=x).logits, atol=1e-3)  # the adapters change the function
        loaded = lora_from_adapter(copy.deepcopy(fresh), path)
        assert torch.allclose(loaded(input_ids=x).logits, want, atol=1e-6)
        merged = merge_lora(loaded)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(input_ids=x).logits, want, atol=1e-4)
        assert any("lora" in n for n, _ in loaded.named_parameters())  # keep=True left the peft model as it was
        in_place = merge_lora(loaded, keep=False)
        assert torch.allclose(in_place(input_ids=x).logits, want, atol=1e-4)
    assert [f.name for f in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary file left behind


def test_bad_adapter_files_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="does not exist"):
        lora_from_adapter(tiny_llama(), tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="plain.safetensors is not a leanml LoRA adapter"):
        lora_from_adapter(tiny_llama(), tmp_path / "plain.safetensors")
    path = save_lora_adapter(trained_like(tiny_llama()), tmp_path / "a.safetensors")
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="does not fit this model"):
        lora_from_adapter(other, path)
