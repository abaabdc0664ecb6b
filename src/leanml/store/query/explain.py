"""Text rendering of a query plan: rewrites, one line per operator (rows, predicted, measured), notes."""

from __future__ import annotations

from typing import Any


def _t(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def render(q: Any, recs: list, *, ran: bool) -> str:
    """The plan; predicted times are leanml.hw's roofline on the host device, n/a where not modelled."""
    src = q.source
    head = (f"query plan over {src.root}: {len(src.ids())} rows, dim {src.manifest.dim}, codec "
            f"{src.manifest.codec}, {len(src.checkpoint_names())} checkpoint(s); host cost model: {q.host}"
            + ("" if ran else "  [not run yet: predictions only]"))
    lines = [head]
    for n in q.notes:
        lines.append(f"  rewrite: {n}")
    w = max([len(r.operator) for r in recs] + [8])
    lines.append(f"  {'#':<3} {'operator':<{w}} {'rows in':>9} {'rows out':>9} {'predicted':>11} {'measured':>11}")
    for r in recs:
        lines.append(f"  {r.step.split()[0]:<3} {r.operator:<{w}} {r.rows_in if r.rows_in is not None else '?':>9} "
                     f"{r.rows_out if r.rows_out is not None else '?':>9} {_t(r.predicted_s):>11} "
                     f"{_t(r.measured_s) if (ran or r.measured_s is not None) else '-':>11}")
        for n in r.notes:
            lines.append(f"      {n}")
    lines.append("  predicted = leanml.hw roofline (shards in page cache; nearest: plus its measured per-call overhead "
                 "and scale, see calibration.py); other steps omit Python/dispatch overhead, which dominates small "
                 "inputs; n/a = not modelled (DuckDB, scipy)")
    return "\n".join(lines)
