"""Project a study's measured selection and training times from this machine onto a catalog device.

Per cell, each metered stage is scaled by the per-kernel roofline ratio (`leanml.hw.project_cost`
with a traced profile of the suite's model, predicted on both devices):

* training on the selection and the selection's warm-ups ("train"): one training step (+ Adam);
* forward scoring passes ("infer"): one inference batch;
* per-example gradient features ("grads"): batched ``vmap(grad)`` kernels plus the dense projection.

ASSUMPTION: the rest of the selection ("other": numpy scoring, greedy coreset loops, sampling) is
host work that stays at its measured time on the target system. Energy on the target is an
ESTIMATE from the target's power model (stages at their predicted utilization, idle power during
"other"); host CPU energy is not in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from leanml.meter import Cost

SELECT_STAGES = ("train", "infer", "grads")
STAGE_COLUMNS = {s: f"select_stage_{s}_s" for s in (*SELECT_STAGES, "other")}
DEFAULT_GRAD_DIM = 512  # leanml.select.Featurizer's default projection dimension


class ProjectionError(ValueError):
    """A projection cannot be made (unknown device, uncalibrated machine, suite without a workload)."""


def stage_seconds(cost: Cost) -> dict[str, float]:
    """Wall seconds of a selection per stage; "other" is the rest (host work, and any stage not in
    `SELECT_STAGES`, kept at its measured time by the projection)."""
    wall = float(cost.wall_s or 0.0)
    out = {s: float(cost.stages[s].wall_s or 0.0) if s in cost.stages else 0.0 for s in SELECT_STAGES}
    out["other"] = max(0.0, wall - sum(out.values()))
    return out


@dataclass(frozen=True)
class StageRatio:
    """How one kind of work scales from the measured device to the target (per-kernel roofline)."""

    kind: str  # "train", "infer", "grads"
    profile: str  # what was traced
    ratio: float  # predicted target time / predicted measured-device time
    energy_per_s: float  # target energy estimate (J) per measured second of this work
    method: str


def check_devices(to_device: str, from_device: str = "local") -> None:
    """Raise `ProjectionError` with what to do when either device is unknown or 'local' is uncalibrated."""
    from leanml.hw import UnknownDeviceError, get_device, local_device_path

    try:
        get_device(from_device)
    except UnknownDeviceError as e:
        if from_device == "local":
            state = "is unreadable (see the warning)" if local_device_path().exists() else "does not exist"
            raise ProjectionError(
                f"--project-from local: this machine's calibration {local_device_path()} {state}. Run "
                "`leanml hw calibrate --threads N` with N the suite's torch threads (the quick suite runs on 1; "
                "add --quick for a seconds-long calibration), or project from a catalog device, e.g. "
                "--project-from dev_vm") from None
        raise ProjectionError(f"--project-from: {e}") from None
    try:
        get_device(to_device)
    except UnknownDeviceError as e:
        raise ProjectionError(f"--project-to: {e}") from None


def _profiles(workload: Any, grad_dims: list[int]) -> dict[str, Any]:
    """Traced profiles (meta device) of the workload: "train", "infer", and "grads@<dim>" per dimension."""
    import torch

    from leanml.hw import trace_inference, trace_per_example_grads, trace_train_step
    from leanml.hw.trace import OpRecord, Profile

    w = workload
    with torch.device("meta"):
        model = w.build()
        opt = torch.optim.Adam(model.parameters())

        def xy(b: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.randn(b, *w.input_shape), torch.randint(0, w.n_classes, (b,))

        out = {"train": trace_train_step(model, *xy(w.train_batch), optimizer=opt, name=w.name),
               "infer": trace_inference(model, xy(w.infer_batch)[0], name=w.name)}
        g = trace_per_example_grads(model, *xy(w.grads_batch), name=w.name) if grad_dims else None
    n_params = sum(p.numel() for p in model.parameters())
    b = w.grads_batch
    for k in grad_dims:  # + the seeded dense JL projection of the (b, P) gradients to k dims
        proj = OpRecord("leanml.grads dense projection", "matmul", 2.0 * b * n_params * k,
                        4.0 * (b * n_params + n_params * k + b * k), "fp32", "(projection)", "other")
        out[f"grads@{k}"] = Profile(g.name, g.batch, g.mode, [*g.ops, proj], g.param_bytes)
    return out


def stage_ratios(workload: Any, to_device: str, from_device: str = "local",
                 grad_dims: tuple[int, ...] = (DEFAULT_GRAD_DIM,)) -> dict[str, StageRatio]:
    """Per-kind ratios ("train", "infer", "grads@<dim>") of the workload from ``from_device`` to ``to_device``."""
    from leanml.hw import project_cost

    check_devices(to_device, from_device)
    ratios = {}
    for kind, prof in _profiles(workload, sorted(set(grad_dims))).items():
        p = project_cost(1.0, from_device, to_device, profile=prof)
        if kind == "train":
            what = f"train step, batch {prof.batch} (+ Adam)"
        elif kind == "infer":
            what = f"forward pass, batch {prof.batch}"
        else:
            what = f"per-example gradients, batch {prof.batch}, projected to {kind.split('@')[1]} dims"
        ratios[kind] = StageRatio(kind, f"{workload.name}: {what}", p.ratio, p.energy_j, p.method)
    return ratios


def _grad_dim(suite: Any, method: str) -> int:
    return int(suite.method_params.get(method, {}).get("dim", DEFAULT_GRAD_DIM))


def project_rows(rows: list[dict[str, Any]], suite: Any, to_device: str, *, from_device: str = "local",
                 sizes: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, StageRatio]]:
    """Project every study row onto ``to_device``; returns (projected rows, the ratios used).

    A row without stage columns (written before stage metering) gets its selection projected as
    None ("unavailable"); its training is still projected.
    """
    from leanml.bench.suites import get_suite
    from leanml.hw import get_device

    suite = get_suite(suite) if isinstance(suite, str) else suite
    if suite.workload is None:
        raise ProjectionError(f"suite '{suite.name}' provides no workload (model and batch sizes) to trace, so "
                              "it cannot be projected; suites with one: quick, cifar10, sst2-frozen")
    workload = suite.workload(suite.resolve_sizes(sizes))
    dims = tuple(sorted({_grad_dim(suite, r["method"]) for r in rows if (r.get(STAGE_COLUMNS["grads"]) or 0) > 0}))
    ratios = stage_ratios(workload, to_device, from_device, dims)
    idle_w = get_device(to_device).power.idle
    out = []
    for r in rows:
        tr = ratios["train"]
        train_s = None if r.get("train_wall_s") is None else r["train_wall_s"] * tr.ratio
        energy = None if train_s is None else r["train_wall_s"] * tr.energy_per_s
        p: dict[str, Any] = {k: r[k] for k in ("suite", "method", "budget", "seed", "accuracy")}
        p.update(device=to_device, from_device=from_device, measured_select_s=r.get("select_wall_s"),
                 measured_train_s=r.get("train_wall_s"), train_s=train_s)
        stages = {s: r.get(c) for s, c in STAGE_COLUMNS.items()}
        if any(v is None for v in stages.values()):
            p.update(select_s=None, total_s=None, energy_est_j=None,
                     note="selection unavailable: the row predates stage metering (rerun the cell)")
        else:
            kinds = {"train": "train", "infer": "infer", "grads": f"grads@{_grad_dim(suite, r['method'])}"}
            used = [s for s in SELECT_STAGES if stages[s] > 0]
            sel = {s: stages[s] * ratios[kinds[s]].ratio if s in used else 0.0 for s in SELECT_STAGES}
            sel["other"] = stages["other"]  # host work: kept at its measured time (stated assumption)
            for s, v in sel.items():
                p[f"select_{s}_s"] = v
            p["select_s"] = sum(sel.values())
            p["total_s"] = None if train_s is None else p["select_s"] + train_s
            sel_e = sum(stages[s] * ratios[kinds[s]].energy_per_s for s in used) + idle_w * stages["other"]
            p["energy_est_j"] = None if energy is None else energy + sel_e
            p["note"] = ""
        out.append(p)
    return out, ratios


def summarize_projection(prows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (method, budget) of measured and projected seconds and the energy estimate."""
    groups: dict[tuple, list[dict]] = {}
    for r in prows:
        groups.setdefault((r["method"], float(r["budget"])), []).append(r)
    keys = ("measured_select_s", "measured_train_s", "select_s", "train_s", "total_s", "energy_est_j",
            *(f"select_{s}_s" for s in (*SELECT_STAGES, "other")))
    out = []
    for (method, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row: dict[str, Any] = {"method": method, "budget": budget, "seeds": len(rs)}
        for k in keys:
            v = [x.get(k) for x in rs]
            row[k] = None if any(a is None for a in v) else float(np.mean(v))
        out.append(row)
    return out


def _f(v: float | None, nd: int = 3) -> str:
    return "unavailable" if v is None else f"{v:.{nd}f}"


def projection_markdown(prows: list[dict[str, Any]], ratios: dict[str, StageRatio], to_device: str,
                        from_device: str) -> str:
    """The report section "Projected onto <device>": assumptions, ratios, then one row per (method, budget)."""
    lines = [f"## Projected onto {to_device}", "",
             f"Measured seconds on `{from_device}` scaled per stage by the per-kernel roofline ratio of the "
             "suite's model (`leanml.hw.project_cost` on traced profiles). Host work (\"other\": numpy scoring, "
             "greedy coreset loops) is ASSUMED to stay at its measured time. Energy is an ESTIMATE from "
             f"{to_device}'s power model (idle power during host work; host CPU energy not included).", "",
             "| stage | profile | ratio |", "| --- | --- | ---: |"]
    lines += [f"| {k} | {r.profile} | {r.ratio:.4g} |" for k, r in sorted(ratios.items())]
    lines += ["", "| method | budget | select s (measured) | select s (projected) | of which other | "
              "train s (measured) | train s (projected) | total s (projected) | energy J (estimate) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in summarize_projection(prows):
        lines.append(f"| {r['method']} | {r['budget']:g} | {_f(r['measured_select_s'])} | {_f(r['select_s'])} | "
                     f"{_f(r['select_other_s'])} | {_f(r['measured_train_s'])} | {_f(r['train_s'])} | "
                     f"{_f(r['total_s'])} | {_f(r['energy_est_j'], 2)} |")
    return "\n".join(lines)
