"""Peer contenders for benchmarks/grads_throughput.py: LoGra-style factorized features from LogIX and bergson.

Every contender works on its own copy of the same model (LogIX inserts modules into the model it
watches; bergson needs the watched weights to require grad), on the same batches, and produces the
same kind of feature as leanml's factorized path with no second stage: for each watched linear layer,
the per-example gradient projected on both sides to ``r x r`` (``P_out^T G P_in``, r = 32 here, so
1,024 numbers per layer). The watched layers are MiniLM's q/k/v/o projections (peft's
``base_layer`` modules: 24 layers of 384 x 384): LogIX's LoGra cannot wrap peft's LoRA adapters (its
module has no ``weight``, which peft reads), so the comparison is on the layers all three can watch.

- `LogIXContender`: ``logix.watch`` + ``logix.add_lora`` (LoGra: random encoder/decoder, zero
  bottleneck whose gradient is the projected per-example gradient), ``setup({"grad": ["log"]})``,
  one ``with run(data_id, mask)`` block per batch and ``get_log()`` (in memory, nothing saved).
- `BergsonContender`: ``bergson.collector.in_memory_collector.InMemoryCollector`` with
  ``GradientProcessor(projection_dim=r, projection_type="rademacher")`` around the same forward and
  backward; ``process_batch`` writes the batch's features to its in-memory builder.

Each ``step(batch)`` returns nothing; what it costs is the contender's time per batch. A contender
that cannot be built raises `PeerUnavailable` with the reason the table prints.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch
from torch import nn


class PeerUnavailable(RuntimeError):
    """A peer that will not install or run here; the message is the reason."""


def base_layer_names(model: nn.Module) -> list[str]:
    """The peft ``base_layer`` linears (the frozen q/k/v/o weights that LoRA adapts)."""
    return [n for n, m in model.named_modules() if n.endswith("base_layer") and isinstance(m, nn.Linear)]


class LogIXContender:
    name = "LogIX LoGra (logix-ai)"

    def __init__(self, model: nn.Module, loss: Any, rank: int) -> None:
        try:
            import logix
            from logix.config import LoRAConfig
        except ImportError as e:
            raise PeerUnavailable(f"logix-ai not installed ({e}); it declares Python < 3.11: "
                                  "pip install --no-deps --ignore-requires-python logix-ai einops pyyaml") from None
        self.model = copy.deepcopy(model).eval()
        self.loss, self._dir = loss, tempfile.TemporaryDirectory()
        self.logix = logix
        self.run = logix.LogIX(project=f"{self._dir.name}/logix", config=None)
        self.run.watch(self.model, name_filter=["base_layer"])
        self.run.add_lora(lora_config=LoRAConfig(rank=rank))
        self.run.setup({"grad": ["log"]})
        self.n = 0

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        B = batch["input_ids"].shape[0]
        with self.run(data_id=list(range(self.n, self.n + B)), mask=batch["attention_mask"]):
            self.model.zero_grad(set_to_none=True)
            self.loss.loss(self.model, batch).sum().backward()
        _, log = self.run.get_log()
        assert len(log) and next(iter(next(iter(log.values())).values())).shape[0] == B
        self.n += B


class BergsonContender:
    name = "bergson InMemoryCollector"

    def __init__(self, model: nn.Module, loss: Any, rank: int, n_rows: int) -> None:
        try:
            from bergson.collector.in_memory_collector import InMemoryCollector
            from bergson.config.config import IndexConfig
            from bergson.gradients import GradientProcessor
            from datasets import Dataset
        except ImportError as e:
            raise PeerUnavailable(f"bergson not importable ({e}); install it with --no-deps and its deps "
                                  "except torchvision/torchaudio (see pyproject's peers-grads extra)") from None
        self.model = copy.deepcopy(model).eval()
        names = set(base_layer_names(self.model))
        for n, m in self.model.named_modules():
            if n in names:
                m.weight.requires_grad_(True)  # its backward hooks fire only on outputs that require grad
        self.model.device = torch.device("cpu")  # bergson reads model.device (a transformers attribute)
        self._dir = tempfile.TemporaryDirectory()
        data = Dataset.from_dict({"input_ids": [[0]] * n_rows})
        cfg = IndexConfig(run_path=f"{self._dir.name}/run", projection_dim=rank)
        proc = GradientProcessor(projection_dim=rank, projection_type="rademacher")
        self.col = InMemoryCollector(model=self.model, data=data, cfg=cfg, processor=proc, target_modules=names)
        self.loss, self.n, self.n_rows = loss, 0, n_rows

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        B = batch["input_ids"].shape[0]
        with self.col.with_batch(batch["attention_mask"].bool()):
            losses = self.loss.loss(self.model, batch)
            losses.sum().backward()
            self.model.zero_grad(set_to_none=True)
        self.col.process_batch([(self.n + i) % self.n_rows for i in range(B)], losses=losses.detach())
        self.n += B
