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

import numpy as np
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


def ekfac_vs_kronfluence(model: nn.Module, loss: Any, batches: list[dict[str, torch.Tensor]], n_query: int,
                         rank: int) -> list[dict[str, Any]]:
    """EK-FAC influence on MiniLM's q/k/v/o weights, end to end (factors on the training batches, then
    query x train scores): kronfluence (``strategy="ekfac"``, empirical Fisher like leanml's, full
    384 x 384 factors) against `leanml.grads.EKFAC` (factors in the projected r x r space of the
    factorized features, no second stage). Also reports how well leanml's scores agree with
    kronfluence's (Pearson and Spearman over all query-train pairs)."""
    import time

    from scipy.stats import spearmanr
    from torch.utils.data import Dataset as TorchDataset

    from leanml.grads import EKFAC, FactorizedProjector, GradientComputer

    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
    except ImportError as e:
        raise PeerUnavailable(f"kronfluence not importable ({e}); install it with --no-deps") from None
    names = base_layer_names(model)
    T = max(b["input_ids"].shape[1] for b in batches)
    rows = []
    for b in batches:
        pad = T - b["input_ids"].shape[1]
        ids = nn.functional.pad(b["input_ids"], (0, pad))
        am = nn.functional.pad(b["attention_mask"], (0, pad))
        rows += [{"input_ids": ids[i], "attention_mask": am[i], "y": b["y"][i]} for i in range(len(ids))]
    train_rows, query_rows = rows, rows[:n_query]

    class _Rows(TorchDataset):
        def __init__(self, r: list[dict]) -> None:
            self.r = r

        def __len__(self) -> int:
            return len(self.r)

        def __getitem__(self, i: int) -> dict:
            return self.r[i]

    class _Task(Task):
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
            return loss.loss(model, batch).sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            return loss.loss(model, batch).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return names

        def get_attention_mask(self, batch: Any) -> torch.Tensor:
            return batch["attention_mask"]

    bs = batches[0]["input_ids"].shape[0]
    # leanml first, on the unmodified model (prepare_model wraps kronfluence's modules into its copy)
    t0 = time.perf_counter()
    layers = {nm: (model.get_submodule(nm).in_features, model.get_submodule(nm).out_features, True) for nm in names}
    proj = FactorizedProjector(layers, dim=10**9, layer_dims={nm: (rank, rank) for nm in names})
    gc = GradientComputer(model, loss, params=names, projector=proj)
    ek = EKFAC(gc, damping=0.1).fit(batches)
    pre = torch.cat([ek.features(b) for b in batches])
    q = torch.cat([gc.features(b) for b in batches])[:n_query]
    ours = (q @ pre.T).double().numpy()
    t_ours = time.perf_counter() - t0

    kmodel = copy.deepcopy(model).eval()
    task = _Task()
    kmodel = prepare_model(kmodel, task)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        an = Analyzer(analysis_name="bench", model=kmodel, task=task, cpu=True, output_dir=d, disable_tqdm=True,
                      log_level=40)
        fa = FactorArguments(strategy="ekfac", use_empirical_fisher=True)
        an.fit_all_factors(factors_name="ekfac", dataset=_Rows(train_rows), per_device_batch_size=bs, factor_args=fa)
        an.compute_pairwise_scores(scores_name="s", factors_name="ekfac", query_dataset=_Rows(query_rows),
                                   train_dataset=_Rows(train_rows), per_device_query_batch_size=n_query,
                                   per_device_train_batch_size=bs,
                                   score_args=ScoreArguments(damping_factor=None))  # 0.1 x mean eigenvalue, as leanml
        theirs = an.load_pairwise_scores("s")["all_modules"].double().numpy()
        t_theirs = time.perf_counter() - t0
    off = ~np.eye(n_query, len(train_rows), dtype=bool)  # queries are the first training rows: drop self pairs
    agree = {"pearson": float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]),
             "spearman": float(spearmanr(ours.ravel(), theirs.ravel()).statistic),
             "pearson_off_diagonal": float(np.corrcoef(ours[off], theirs[off])[0, 1]),
             "spearman_off_diagonal": float(spearmanr(ours[off], theirs[off]).statistic),
             "spearman_per_query_mean": float(np.mean([spearmanr(a, b).statistic
                                                       for a, b in zip(ours, theirs, strict=True)]))}
    n = len(train_rows)
    note = f"{n} train x {n_query} queries, end to end"
    return [{"method": "leanml EKFAC (projected 32x32) fit + scores", "examples": n, "ex_per_s": n / t_ours,
             "seconds": t_ours, "extrapolated": False, "note": note, "agreement_with_kronfluence": agree},
            {"method": "kronfluence EK-FAC fit + scores", "examples": n, "ex_per_s": n / t_theirs,
             "seconds": t_theirs, "extrapolated": False, "note": note + " (full 384x384 factors)"}]
