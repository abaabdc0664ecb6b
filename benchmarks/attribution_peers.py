"""The peer attributors of benchmarks/attribution_quality.py, each run on leanml's checkpoints.

Every function takes the same model factory, the same list of checkpoint state dicts (the epochs of
the one training run that leanml's TRAK ensembles), the same training and held-out arrays and the
same projection size, and returns a ``(T, N)`` attribution matrix oriented like leanml's: positive =
including the training example is predicted to raise the held-out example's correct-class margin.

- `traker_trak`: ``trak.TRAKer`` (MadryLab's reference), task "image_classification" (its model
  output is the margin ``logit_y - logsumexp_{j != y} logit_j`` and its Q the ``1 - p`` weights),
  ``BasicProjector`` (the CPU projector), fp32, its default ``lambda_reg = 0``.
- `dattri_trak`: ``dattri.algorithm.trak.TRAKAttributor`` with the log-odds output and correct-class
  probability functions of dattri's own examples (examples/pretrained_benchmark), its default
  ``regularization = 0``.
- `dattri_tracin`: ``TracInAttributor`` with the checkpoints' learning rates as weights, loss
  gradients on both sides, projected to the same k (positive = aligned loss gradients = a step on
  the training example lowers the held-out loss).
- `dattri_if`: ``IFAttributorExplicit`` (exact Hessian of the training loss, damped) for models
  small enough, else ``IFAttributorDataInf`` (DataInf's closed-form approximation of the inverse
  Hessian-vector product), loss gradients on both sides.

Imports are inside each function: the peers are optional (``pip install leanml[peers-attr]``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

Factory = Callable[[], nn.Module]


def _loader(X: np.ndarray, y: np.ndarray, bs: int = 256) -> DataLoader:
    return DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=bs, shuffle=False)


def _eval_model(factory: Factory) -> nn.Module:
    m = factory()
    m.eval()
    return m


def traker_trak(factory: Factory, ckpts: list[dict], Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray,
                yte: np.ndarray, k: int) -> np.ndarray:
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    model = _eval_model(factory)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d:
        proj = BasicProjector(n_params, k, seed=0, proj_type=ProjectionType.rademacher, device=torch.device("cpu"),
                              dtype=torch.float32, block_size=100)
        tr = TRAKer(model=model, task="image_classification", train_set_size=len(Xtr), save_dir=d, device="cpu",
                    projector=proj, use_half_precision=False, logging_level=40)
        for mid, ck in enumerate(ckpts):
            tr.load_checkpoint(ck, model_id=mid)
            model.eval()
            for x, y in _loader(Xtr, ytr):
                tr.featurize(batch=(x, y), num_samples=len(x))
        tr.finalize_features()
        for mid, ck in enumerate(ckpts):
            tr.start_scoring_checkpoint(exp_name="lds", checkpoint=ck, model_id=mid, num_targets=len(Xte))
            model.eval()
            for x, y in _loader(Xte, yte):
                tr.score(batch=(x, y), num_samples=len(x))
        scores = tr.finalize_scores(exp_name="lds")
    return np.asarray(scores, dtype=np.float64).T


def _dattri_task(factory: Factory, ckpts: list[dict], kind: str, sample_ndim: int):
    """dattri's task: per-example functions (called on one example inside vmap, or on a whole batch
    by the explicit-Hessian IF, hence the batch dimension added only to a single example)."""
    from dattri.task import AttributionTask

    model = _eval_model(factory)

    def batched(x, y):
        return (x.unsqueeze(0), y.unsqueeze(0)) if x.dim() == sample_ndim else (x, y)

    def margin(params, pair):
        x, y = batched(*pair)
        logp = -nn.functional.cross_entropy(torch.func.functional_call(model, params, x), y)
        return logp - torch.log(1 - torch.exp(logp))

    def loss(params, pair):
        x, y = batched(*pair)
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, x), y)

    def load(m, ck):
        m.load_state_dict(ck)
        m.eval()
        return m

    def prob(params, pair):
        return torch.exp(-loss(params, pair))

    f = margin if kind == "margin" else loss
    return AttributionTask(loss_func=f, model=model, checkpoints=list(ckpts), checkpoints_load_func=load), prob


def dattri_trak(factory: Factory, ckpts: list[dict], Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray,
                yte: np.ndarray, k: int) -> np.ndarray:
    from dattri.algorithm.trak import TRAKAttributor

    task, prob = _dattri_task(factory, ckpts, "margin", Xtr.ndim - 1)
    att = TRAKAttributor(task=task, correct_probability_func=prob, device="cpu",
                         projector_kwargs={"proj_dim": k, "proj_type": "rademacher"})
    with torch.no_grad():
        att.cache(_loader(Xtr, ytr))
        s = att.attribute(_loader(Xte, yte))
    return s.detach().double().numpy().T


def dattri_tracin(factory: Factory, ckpts: list[dict], lrs: list[float], Xtr: np.ndarray, ytr: np.ndarray,
                  Xte: np.ndarray, yte: np.ndarray, k: int) -> np.ndarray:
    from dattri.algorithm.tracin import TracInAttributor

    task, _ = _dattri_task(factory, ckpts, "loss", Xtr.ndim - 1)
    att = TracInAttributor(task=task, weight_list=torch.tensor(lrs, dtype=torch.float32), normalized_grad=False,
                           projector_kwargs={"proj_dim": k, "proj_type": "rademacher"}, device="cpu")
    s = att.attribute(_loader(Xtr, ytr), _loader(Xte, yte))
    return s.detach().double().numpy().T


def dattri_if(factory: Factory, ckpts: list[dict], Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray,
              yte: np.ndarray, explicit_max_params: int = 2000, damping: float = 1e-3) -> tuple[np.ndarray, str]:
    """Influence functions at the last checkpoint (IF is a single-model method)."""
    from dattri.algorithm.influence_function import IFAttributorDataInf, IFAttributorExplicit

    task, _ = _dattri_task(factory, ckpts[-1:], "loss", Xtr.ndim - 1)
    n_params = sum(p.numel() for p in task.get_model().parameters())
    if n_params <= explicit_max_params:
        att, what = IFAttributorExplicit(task=task, device="cpu", regularization=damping), "IF explicit Hessian"
    else:
        att, what = IFAttributorDataInf(task=task, device="cpu", regularization=damping), "IF DataInf"
    att.cache(_loader(Xtr, ytr, bs=len(Xtr)))  # one batch: the Hessian of the whole training loss
    s = att.attribute(_loader(Xtr, ytr), _loader(Xte, yte))
    return s.detach().double().numpy().T, what
