"""The logical steps of a query, checked when added, and read from a TOML/JSON spec.

Every step maps an Arrow relation (column ``id`` always; ``score``, ``query``/``rank``,
``component``... as steps add them) to another. Semantics, as `explain` states them:

* ``where(sql)``: keep rows whose metadata matches ``sql`` (DuckDB, over the Parquet metadata only).
  Commutes with ``score``; after ``nearest`` it post-filters the k results (fewer may remain).
* ``nearest(queries, k)``: per query the k rows of the current set with the highest combined cosine
  ``sum_c w_c cos(x_c, q_c)``; columns ``query, rank, id, score``.
* ``score(method, target)``: one ``score`` per row: ``less`` (mean over a subtask's targets, max over
  subtasks), ``trak`` (kernel over ALL stored rows, mean over targets), ``inner`` (``sum_c w_c x_c·t_c``,
  ``reduce`` mean or max over targets).
* ``top(n)`` / ``top_fraction(p)``: highest ``score`` first (per query after ``nearest``).
* ``knn_graph(k, threshold)``: edges between rows of the current set with combined cosine >= threshold
  (and, when k is given, among each row's k nearest), symmetric; paths only through rows in the set.
* ``components()``: connected components of that graph (``component``, ``component_size``).
* ``dedup(threshold)``: the threshold graph, its components, one row kept per component (highest score,
  else lowest id).
* ``diversify(n, method)``: ``components``: best row of each component in score order, then the next
  best of each, until n; ``facility``: greedy facility location over the graph's similarities.
* ``sample(n, seed)``: n rows uniformly at random.
* ``join(table, on)``: DuckDB join with a user table (Arrow, dict of columns) or ``"metadata"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leanml.store.query.errors import QueryError

SCORE_METHODS = ("less", "trak", "inner")
DIVERSIFY_METHODS = ("components", "facility")


@dataclass
class Step:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        shown = {k: (f"<{np.shape(v)} array>" if isinstance(v, np.ndarray | list) and k in ("queries", "target")
                     else v) for k, v in self.args.items() if v is not None and k != "table"}
        return f"{self.kind}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def _pos_int(step: str, name: str, v: Any, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
        raise QueryError(step, f"{name} must be a whole number >= 1, got {v!r}")
    return int(v)


def check(step: Step, where: str) -> Step:
    """Validate a step's arguments (``where`` is its label, e.g. "3 top")."""
    a, k = step.args, step.kind
    if k == "where":
        if not isinstance(a.get("sql"), str) or not a["sql"].strip():
            raise QueryError(where, "sql must be a non-empty SQL predicate, e.g. \"label = 1 AND length < 512\"")
    elif k == "nearest":
        _pos_int(where, "k", a.get("k"))
        if a.get("metric", "cosine") not in ("cosine", "ip"):
            raise QueryError(where, f"metric must be 'cosine' or 'ip', got {a.get('metric')!r}")
        if a.get("queries") is None:
            raise QueryError(where, "queries are required: features [d], [n, d] or [C, n, d]")
        if a.get("recall") is not None and not 0 < a["recall"] <= 1:
            raise QueryError(where, f"recall must be in (0, 1] (None = exact), got {a['recall']!r}")
    elif k == "score":
        if a.get("method") not in SCORE_METHODS:
            raise QueryError(where, f"method must be one of {SCORE_METHODS}, got {a.get('method')!r}")
        if a.get("target") is None:
            raise QueryError(where, "target is required: a stored task name or target features [n, d] / [C, n, d]")
        if a.get("reduce", "mean") not in ("mean", "max"):
            raise QueryError(where, f"reduce must be 'mean' or 'max', got {a.get('reduce')!r}")
    elif k == "top":
        _pos_int(where, "n", a.get("n"))
    elif k == "top_fraction":
        p = a.get("p")
        if not isinstance(p, float | int) or not 0 < p <= 1:
            raise QueryError(where, f"p must be a fraction in (0, 1], got {p!r}")
    elif k in ("knn_graph", "dedup"):
        _pos_int(where, "k", a.get("k"), allow_none=True)
        t = a.get("threshold")
        if k == "knn_graph" and a.get("k") is None and t is None:
            raise QueryError(where, "give k, threshold or both")
        if (t is not None or k == "dedup") and (isinstance(t, bool) or not isinstance(t, float | int)
                                                or not -1 <= t <= 1):
            raise QueryError(where, f"threshold must be a cosine in [-1, 1], got {t!r}")
    elif k == "diversify":
        _pos_int(where, "n", a.get("n"))
        if a.get("method", "components") not in DIVERSIFY_METHODS:
            raise QueryError(where, f"method must be one of {DIVERSIFY_METHODS}, got {a.get('method')!r}")
    elif k == "sample":
        _pos_int(where, "n", a.get("n"))
    elif k == "join":
        if not a.get("on"):
            raise QueryError(where, "on must name the join column(s)")
    elif k != "components":
        raise QueryError(where, f"unknown step {k!r}")
    return step


STEP_KINDS = ("where", "nearest", "score", "top", "top_fraction", "knn_graph", "components", "dedup",
              "diversify", "sample", "join")


def load_spec(path: str | Path) -> list[Step]:
    """Steps from a TOML (``[[step]]`` tables with ``op = "where"`` etc.) or JSON (``{"steps": [...]}``) file.

    Array arguments (``queries``, ``target``) may name a ``.npy`` file relative to the spec's folder."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise QueryError("spec", f"cannot read {p}: {e}") from None
    try:
        if p.suffix == ".toml":
            import tomllib

            d = tomllib.loads(text)
            raw = d.get("step") or d.get("steps")
        else:
            d = json.loads(text)
            raw = d.get("steps") if isinstance(d, dict) else d
    except (ValueError, TypeError) as e:
        raise QueryError("spec", f"{p} is not valid {p.suffix.lstrip('.') or 'JSON'}: {e}") from None
    if not isinstance(raw, list) or not raw:
        raise QueryError("spec", f"{p}: expected a non-empty list of steps ([[step]] in TOML, \"steps\" in JSON)")
    steps = []
    for i, s in enumerate(raw, 1):
        if not isinstance(s, dict) or "op" not in s:
            raise QueryError(f"{i}", f"each step needs op = one of {STEP_KINDS}, got {s!r}")
        args = {k: v for k, v in s.items() if k != "op"}
        for key in ("queries", "target"):
            if isinstance(args.get(key), str) and args[key].endswith(".npy"):
                f = (p.parent / args[key])
                if not f.exists():
                    raise QueryError(f"{i} {s['op']}", f"{key} file {f} does not exist")
                args[key] = np.load(f)
        steps.append(Step(str(s["op"]), args))
    return steps
