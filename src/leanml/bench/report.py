"""Study report: a Markdown table and three PNG plots (accuracy vs budget, accuracy vs total cost
with the Pareto front, stacked select/train cost per method), plus optional "projected onto
<device>" tables (`leanml.bench.projection`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanml.bench.study import summarize
from leanml.bench.suites import VARIANTS
from leanml.io import atomic_write_bytes, atomic_write_text


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower-or-equal cost and higher-or-equal accuracy,
    one strictly), in order of cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


COSTS = {"wall": "wall", "cpu": "CPU"}  # which seconds the table, plots and Pareto front use


def check_cost(cost: str) -> str:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)} (wall or CPU seconds), got {cost!r}")
    return cost


def _fmt(v: float | None, nd: int = 2) -> str:
    return "unavailable" if v is None else f"{v:.{nd}f}"


def markdown_table(summary: list[dict[str, Any]], cost: str = "wall") -> str:
    """The summary as Markdown; select/train/total in ``cost`` seconds (with CPU, total wall is shown too)."""
    c = check_cost(cost)
    extra = " total wall s |" if c == "cpu" else ""
    lines = [f"| method | budget | accuracy (mean ± sd) | seeds | select {COSTS[c]} s | train {COSTS[c]} s | "
             f"total {COSTS[c]} s |{extra} Pareto |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if extra else "") + " :---: |"]
    pts = [(r[f"total_{c}_s"] or 0.0, r["accuracy"]) for r in summary]
    front = set(pareto_front(pts))
    for i, r in enumerate(summary):
        wall = f" {_fmt(r['total_wall_s'])} |" if extra else ""
        name = r["method"] + (f" ({VARIANTS[r['method']]})" if r["method"] in VARIANTS else "")
        lines.append(f"| {name} | {r['budget']:g} | {r['accuracy']:.4f} ± {r['accuracy_sd']:.4f} | "
                     f"{r['seeds']} | {_fmt(r[f'select_{c}_s'])} | {_fmt(r[f'train_{c}_s'])} | "
                     f"{_fmt(r[f'total_{c}_s'])} |{wall} {'*' if i in front else ''} |")
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plots(summary: list[dict[str, Any]], out: Path, title: str, cost: str = "wall") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in summary})
    cmap = plt.get_cmap("tab20")
    color = {m: cmap(i % 20) for i, m in enumerate(methods)}
    paths = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for m in methods:
        rs = sorted((r for r in summary if r["method"] == m), key=lambda r: r["budget"])
        if m == "full":
            ax.axhline(rs[0]["accuracy"], color="k", ls="--", lw=1, label="full")
            continue
        ax.errorbar([r["budget"] for r in rs], [r["accuracy"] for r in rs], yerr=[r["accuracy_sd"] for r in rs],
                    marker="o", ms=3, lw=1, capsize=2, color=color[m], label=m)
    ax.set_xscale("log")
    ax.set_xlabel("budget (fraction of the pool)")
    ax.set_ylabel(summary[0]["metric"])
    ax.set_title(f"{title}: accuracy vs budget")
    ax.legend(fontsize=7, ncol=2)
    paths.append(out / "accuracy_vs_budget.png")
    _save(fig, paths[-1])
    plt.close(fig)

    c = check_cost(cost)
    fig, ax = plt.subplots(figsize=(8, 5))
    pts = [(r[f"total_{c}_s"] or 0.0, r["accuracy"]) for r in summary]
    for m in methods:
        rs = [r for r in summary if r["method"] == m]
        ax.scatter([r[f"total_{c}_s"] or 0.0 for r in rs], [r["accuracy"] for r in rs], s=18, color=color[m],
                   label=m)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k-", lw=1, label="Pareto front")
    ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=60, facecolors="none", edgecolors="k")
    ax.set_xscale("log")
    ax.set_xlabel(f"total {COSTS[c]} seconds (selection + training)")
    ax.set_ylabel(summary[0]["metric"])
    ax.set_title(f"{title}: accuracy vs total cost")
    ax.legend(fontsize=7, ncol=2)
    paths.append(out / "accuracy_vs_total_cost.png")
    _save(fig, paths[-1])
    plt.close(fig)

    budgets = sorted({r["budget"] for r in summary if r["method"] != "full"})
    ref = 0.1 if 0.1 in budgets else (budgets[len(budgets) // 2] if budgets else 1.0)
    rows = [r for r in summary if r["budget"] == ref or r["method"] == "full"]
    rows.sort(key=lambda r: (r[f"total_{c}_s"] or 0.0))
    fig, ax = plt.subplots(figsize=(8, 5))
    names = [r["method"] for r in rows]
    sel = [r[f"select_{c}_s"] or 0.0 for r in rows]
    tr = [r[f"train_{c}_s"] or 0.0 for r in rows]
    ax.barh(names, sel, color="tab:orange", label="selection")
    ax.barh(names, tr, left=sel, color="tab:blue", label="training")
    ax.set_xlabel(f"{COSTS[c]} seconds (mean over seeds)")
    ax.set_title(f"{title}: cost by stage at budget {ref:g} (full = all data)")
    ax.legend()
    paths.append(out / "cost_by_stage.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def write_report(rows: list[dict[str, Any]], out: str | Path, *, title: str, command: str = "",
                 notes: list[str] | None = None, projections: list[str] | None = None,
                 cost: str = "wall") -> Path:
    """Write ``report.md`` and the PNGs into ``out``; returns the report path.

    ``projections``: Markdown sections from `leanml.bench.projection.projection_markdown`, one per device.
    ``cost``: "wall" or "cpu" seconds for the table, the plots and the Pareto front.
    """
    out = Path(out)
    summary = summarize(rows)
    if not summary:
        raise ValueError(f"no result rows to report in {out}")
    pngs = plots(summary, out, title, cost)
    md = [f"# Study: {title}", ""]
    if command:
        md += ["Command:", "", f"    {command}", ""]
    unit = ("wall seconds" if check_cost(cost) == "wall" else
            "CPU seconds of the study process (the work done; unlike wall time it does not grow while other "
            "jobs hold the cores; total wall seconds are shown beside them)")
    md += [f"Times are {unit} on the machine that ran the study; `select` is the selection's own",
           "compute (warm-ups, gradients, scoring, and the per-batch work of online methods), `train`",
           "the training on the selection, `total` their sum. `*` marks the Pareto front over",
           "(total cost, accuracy).", ""]
    md += [markdown_table(summary, cost), ""]
    for n in notes or []:
        md.append(f"- {n}")
    for section in projections or []:
        md += ["", section]
    md += [""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path
