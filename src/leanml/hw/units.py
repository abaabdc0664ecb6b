"""Quantities in device files: plain numbers in SI base units, or strings with a unit ("4.8 TB/s")."""

from __future__ import annotations

import re

from leanml.hw.errors import SchemaError

# Decimal prefixes are decimal (vendors quote GB = 1e9); binary prefixes are binary (KiB = 1024).
_PREFIX = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# kind -> (base unit names accepted after the prefix, human description)
_KINDS = {
    "bytes": (("B",), "bytes, e.g. 141e9 or \"141 GB\" or \"32 KiB\""),
    "bandwidth": (("B/s",), "bytes per second, e.g. 4.8e12 or \"4.8 TB/s\""),
    "flops": (("FLOP/s", "FLOPS", "OPS", "OP/s"), "operations per second, e.g. 67e12 or \"67 TFLOP/s\""),
    "time": ((), "seconds, e.g. 5e-7 or \"500 ns\""),
    "power": (("W",), "watts, e.g. 700 or \"700 W\""),
    "ratio": ((), "a plain number, e.g. 0.5"),
}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ/]*)\s*$")


def parse_quantity(value: object, kind: str, path: str) -> float:
    """A non-negative quantity of ``kind`` in SI base units; raises SchemaError naming ``path``."""
    if kind not in _KINDS:
        raise ValueError(f"unknown quantity kind {kind!r}")
    units, desc = _KINDS[kind]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SchemaError(path, f"expected {desc}, got {type(value).__name__} {value!r}")
    if isinstance(value, int | float):
        out = float(value)
    else:
        m = _NUM.match(value)
        if not m:
            raise SchemaError(path, f"cannot read {value!r} as {desc}")
        number, unit = float(m.group(1)), m.group(2)
        scale = _unit_scale(unit, kind, units)
        if scale is None:
            raise SchemaError(path, f"unknown unit {unit!r} in {value!r}; expected {desc}")
        out = number * scale
    if out != out or out < 0 or out == float("inf"):
        raise SchemaError(path, f"must be a finite non-negative number, got {value!r}")
    return out


def _unit_scale(unit: str, kind: str, units: tuple[str, ...]) -> float | None:
    if unit == "":
        return 1.0
    if kind == "time":
        return _TIME.get(unit)
    for base in units:
        if unit.endswith(base):
            prefix = unit[: -len(base)]
            if prefix in _PREFIX:
                return _PREFIX[prefix]
    return None


def fmt_si(value: float | None, unit: str, digits: int = 3) -> str:
    """``4.8e12, "B/s"`` -> ``"4.8 TB/s"``; None -> "unavailable"."""
    if value is None:
        return "unavailable"
    if unit == "s":
        for scale, name in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")):
            if abs(value) >= scale or name == "ns":
                return f"{value / scale:.{digits}g} {name}"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(value) >= scale or prefix == "":
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    raise AssertionError("unreachable")
