"""Text models for the sst2 suites: cached MiniLM embeddings and MiniLM + LoRA on token ids."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from leanml.meter import Cost, Meter


def cached_minilm_embeddings(texts: list[str], max_length: int = 128) -> tuple[np.ndarray, Cost]:
    """MiniLM mean-pooled embeddings of ``texts``, cached on disk by content; returns (emb, cost of
    computing them, measured now or read from the cache's record)."""
    from leanml.data import cache_dir
    from leanml.io import atomic_write_bytes, atomic_write_text
    from leanml.select.text import MiniLMEncoder

    h = hashlib.sha256(("\x00".join(texts) + f"|{max_length}").encode()).hexdigest()[:24]
    d = cache_dir("minilm-embeddings")
    f, c = d / f"{h}.npy", d / f"{h}.cost.json"
    if f.exists() and c.exists():
        return np.load(f), Cost.from_json(c.read_text())
    with Meter() as m:
        emb = MiniLMEncoder(max_length=max_length).encode(texts)
    import io

    buf = io.BytesIO()
    np.save(buf, emb)
    atomic_write_bytes(f, buf.getvalue())
    atomic_write_text(c, m.cost.to_json())
    return emb, m.cost


_TOKENIZER = None


def tokenize_ids(texts: list[str], max_len: int) -> np.ndarray:
    """Token ids (N, max_len) int64, padded with the tokenizer's pad id (0 for MiniLM)."""
    global _TOKENIZER
    from transformers import AutoTokenizer

    from leanml.models.weights import weights_dir

    if _TOKENIZER is None:
        _TOKENIZER = AutoTokenizer.from_pretrained(weights_dir("minilm"))
    enc = _TOKENIZER(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="np")
    return enc["input_ids"].astype(np.int64)


class MiniLMLoraClassifier(nn.Module):
    """all-MiniLM-L6-v2 with LoRA adapters (peft) on attention query/value, mean pooling over
    non-pad tokens, and a linear head. Takes token ids; the attention mask is ids != 0 (pad)."""

    def __init__(self, n_classes: int, r: int = 8, seed: int = 0, pad_id: int = 0) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel

        from leanml.models.weights import weights_dir

        torch.manual_seed(seed)
        base = AutoModel.from_pretrained(weights_dir("minilm"), attn_implementation="eager")
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["query", "value"])
        self.encoder = get_peft_model(base, cfg)
        self.pad_id = pad_id
        self.head = nn.Linear(base.config.hidden_size, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))
