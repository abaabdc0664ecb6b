"""`Cost`: what a piece of work cost, with unmeasurable fields kept as None ("unavailable")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

UNAVAILABLE = "unavailable"

# Fields that add when two costs are combined; the peaks take the maximum instead.
_ADDITIVE = ("wall_s", "cpu_s", "energy_cpu_j", "energy_gpu_j", "flops")
_PEAKS = ("peak_rss_bytes", "peak_gpu_bytes")
_UNITS = {
    "wall_s": "s",
    "cpu_s": "s",
    "energy_cpu_j": "J",
    "energy_gpu_j": "J",
    "peak_rss_bytes": "bytes",
    "peak_gpu_bytes": "bytes",
    "flops": "FLOP",
}


def _add(a: float | None, b: float | None) -> float | None:
    # Unknown plus anything is unknown: a partial sum would understate the cost.
    return None if a is None or b is None else a + b


def _max(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(a, b)


@dataclass
class Cost:
    """Resources used by one piece of work.

    A field that could not be measured is ``None`` and prints as "unavailable";
    ``notes`` says why. ``stages`` holds named sub-costs: from `Cost.of_stages` they sum to this
    cost; from a `Meter` they are parts of its block and sum to at most it (the rest ran outside
    any stage).
    """

    wall_s: float | None = None
    cpu_s: float | None = None
    energy_cpu_j: float | None = None
    energy_gpu_j: float | None = None
    peak_rss_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    flops: int | None = None
    notes: dict[str, str] = field(default_factory=dict)
    stages: dict[str, Cost] = field(default_factory=dict)

    # ---- arithmetic -------------------------------------------------------
    @classmethod
    def zero(cls) -> Cost:
        """The identity for ``+``: every field measured as nothing."""
        return cls(**{f: 0 for f in _ADDITIVE + _PEAKS})

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        out = Cost(
            **{f: _add(getattr(self, f), getattr(other, f)) for f in _ADDITIVE},
            **{f: _max(getattr(self, f), getattr(other, f)) for f in _PEAKS},
        )
        out.notes = {**other.notes, **self.notes}
        for name in {**self.stages, **other.stages}:
            mine, theirs = self.stages.get(name), other.stages.get(name)
            out.stages[name] = mine + theirs if mine and theirs else (mine or theirs)
        return out

    def __radd__(self, other: Any) -> Cost:
        if other == 0:  # lets sum(costs) work
            return self
        return self.__add__(other)

    @classmethod
    def of_stages(cls, stages: dict[str, Cost]) -> Cost:
        """A cost that is the sum of named stages, each kept under ``stages``."""
        if not stages:
            raise ValueError("of_stages needs at least one stage")
        total = sum((c.without_stages() for c in stages.values()), Cost.zero())
        total.stages = dict(stages)
        return total

    def stages_only(self) -> Cost:
        """A zero cost that carries this cost's stages: adds the stage split to a total measured elsewhere."""
        out = Cost.zero()
        out.stages = dict(self.stages)
        return out

    def without_stages(self) -> Cost:
        return Cost(**{f: getattr(self, f) for f in _ADDITIVE + _PEAKS}, notes=dict(self.notes))

    # ---- serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f: getattr(self, f) for f in _ADDITIVE + _PEAKS}
        if self.notes:
            d["notes"] = dict(self.notes)
        if self.stages:
            d["stages"] = {k: v.to_dict() for k, v in self.stages.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cost:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Cost.from_dict: unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
        c = cls(**{k: d.get(k) for k in _ADDITIVE + _PEAKS}, notes=dict(d.get("notes", {})))
        c.stages = {k: cls.from_dict(v) for k, v in d.get("stages", {}).items()}
        return c

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cost:
        return cls.from_dict(json.loads(text))

    def flat(self, prefix: str = "") -> dict[str, float | None]:
        """Fields as a flat row (``prefix`` + name), for result tables."""
        return {f"{prefix}{f}": getattr(self, f) for f in _ADDITIVE + _PEAKS}

    # ---- display ----------------------------------------------------------
    @staticmethod
    def format_field(name: str, value: float | None) -> str:
        if value is None:
            return UNAVAILABLE
        unit = _UNITS.get(name, "")
        if unit == "bytes":
            return _human_bytes(value)
        if unit == "FLOP":
            return f"{value:.3e} FLOP"
        return f"{value:.3f} {unit}"

    def rows(self) -> list[tuple[str, str]]:
        return [(f, self.format_field(f, getattr(self, f))) for f in _ADDITIVE + _PEAKS]

    def table(self, title: str = "cost"):
        """A Rich table: one row per field, one column per stage plus the total."""
        from rich.table import Table

        t = Table(title=title)
        t.add_column("measure")
        for name in self.stages:
            t.add_column(name, justify="right")
        t.add_column("total", justify="right", style="bold")
        for f in _ADDITIVE + _PEAKS:
            t.add_row(f, *[s.format_field(f, getattr(s, f)) for s in self.stages.values()],
                      self.format_field(f, getattr(self, f)))
        return t

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.rows())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")
