"""The device catalog: TOML files shipped in ``leanml/hw/catalog`` plus this machine's calibration."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from leanml.hw.errors import SchemaError, UnknownDeviceError
from leanml.hw.schema import Device, System, parse_device, parse_system

CATALOG_DIR = Path(__file__).parent / "catalog"
LOCAL_DEVICE_ID = "local"


@dataclass
class Catalog:
    """Devices and systems by id, with the file each came from."""

    devices: dict[str, Device] = field(default_factory=dict)
    systems: dict[str, System] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def device(self, name: str) -> Device:
        if name not in self.devices:
            raise UnknownDeviceError(f"device {name!r} is not in the catalog; known devices: {sorted(self.devices)}"
                                     + (" (run `leanml hw calibrate` to create 'local')" if name == LOCAL_DEVICE_ID
                                        else ""))
        return self.devices[name]

    def system(self, name: str) -> System:
        if name not in self.systems:
            raise UnknownDeviceError(f"system {name!r} is not in the catalog; known systems: {sorted(self.systems)}")
        return self.systems[name]


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into a SchemaError naming the file."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SchemaError("(file)", f"not valid TOML: {e}", source=str(path)) from None
    except OSError as e:
        raise SchemaError("(file)", f"cannot read: {e.strerror}", source=str(path)) from None


def load_files(paths: list[Path], base: Catalog | None = None) -> Catalog:
    """Load device then system tables from ``paths`` (systems may use devices of any file)."""
    cat = Catalog(dict(base.devices), dict(base.systems), dict(base.files)) if base else Catalog()
    docs = [(Path(p).resolve(), read_toml(Path(p))) for p in paths]
    for p, doc in docs:
        unknown = sorted(set(doc) - {"devices", "systems"})
        if unknown:
            raise SchemaError(unknown[0], "unknown top-level table; expected [devices.<id>] or [systems.<id>]",
                              source=str(p))
        for dev_id, table in doc.get("devices", {}).items():
            if dev_id in cat.devices and cat.files.get(f"devices.{dev_id}") != p:
                raise SchemaError(f"devices.{dev_id}", f"defined twice (also in {cat.files[f'devices.{dev_id}']})",
                                  source=str(p))
            try:
                cat.devices[dev_id] = parse_device(dev_id, table)
            except SchemaError as e:
                raise SchemaError(e.path, e.message, source=str(p)) from None
            cat.files[f"devices.{dev_id}"] = p
    for p, doc in docs:
        for sys_id, table in doc.get("systems", {}).items():
            try:
                cat.systems[sys_id] = parse_system(sys_id, table, cat.devices)
            except SchemaError as e:
                raise SchemaError(e.path, e.message, source=str(p)) from None
            cat.files[f"systems.{sys_id}"] = p
    return cat


def local_device_path() -> Path:
    """Where `leanml hw calibrate` writes this machine's device file by default."""
    from leanml.data import cache_dir

    return cache_dir("hw") / "local.toml"


@lru_cache(maxsize=4)
def _shipped(_key: tuple) -> Catalog:
    return load_files(sorted(CATALOG_DIR.resolve().glob("*.toml")))


def load_catalog(extra: list[Path] | None = None, *, include_local: bool = True) -> Catalog:
    """The shipped catalog, plus this machine's calibration (id ``local``) if one was written."""
    files = sorted(CATALOG_DIR.glob("*.toml"))
    cat = _shipped(tuple((str(f), f.stat().st_mtime_ns) for f in files))
    cat = Catalog(dict(cat.devices), dict(cat.systems), dict(cat.files))
    if include_local and local_device_path().exists():
        try:  # a stale or broken calibration must not hide the shipped catalog: warn and leave it out
            cat = load_files([local_device_path()], base=cat)
        except SchemaError as e:
            import warnings

            warnings.warn(f"ignoring this machine's calibration: {e}; rerun `leanml hw calibrate`", stacklevel=2)
    return load_files(list(extra), base=cat) if extra else cat


def get_device(name: str | Device) -> Device:
    """A catalog device by id (``local`` = this machine's calibration), or a Device passed through."""
    if isinstance(name, Device):
        return name
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        devs = load_files([p]).devices
        if len(devs) != 1:
            raise SchemaError("devices", f"expected exactly one device in {p}, found {sorted(devs)}", source=str(p))
        return next(iter(devs.values()))
    return load_catalog().device(name)


def get_system(name: str | System) -> System:
    if isinstance(name, System):
        return name
    return load_catalog().system(name)


# ---------------------------------------------------------------- writing device files
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else "nan"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_fmt(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _fmt(k)


def device_to_toml(dev: Device, header: str = "") -> str:
    """A TOML document for one device that `parse_device` reads back to an equal Device."""
    p = f"devices.{_key(dev.id)}"
    lines = [f"# {ln}" if ln else "#" for ln in header.splitlines()]
    lines += ["# Units: bytes, bytes/s, seconds, FLOP/s, watts (SI base units).", "", f"[{p}]",
              f"name = {_fmt(dev.name)}", f"class = {_fmt(dev.cls)}", f"compute_units = {dev.compute_units}",
              f"functions = {_fmt(list(dev.functions))}", f"op_overhead = {_fmt(float(dev.op_overhead))}",
              f"view_overhead = {_fmt(float(dev.view_overhead))}",
              f"autograd_overhead = {_fmt(float(dev.autograd_overhead))}",
              *([f"backward_overhead = {_fmt(float(dev.backward_overhead))}"] if dev.backward_overhead else []),
              *([f"module_overhead = {_fmt(float(dev.module_overhead))}"] if dev.module_overhead else []),
              *([f"library_module_overhead = {_fmt(float(dev.library_module_overhead))}"]
                if dev.library_module_overhead else []),
              *([f"fresh_alloc_threshold = {_fmt(float(dev.fresh_alloc_threshold))}"]
                if dev.fresh_alloc_threshold is not None else []),
              *([f"first_touch_bandwidth = {_fmt(float(dev.first_touch_bandwidth))}"]
                if dev.first_touch_bandwidth is not None else []),
              f"peak_source = {_fmt(dev.peak_source)}", "", f"[{p}.peak_flops]"]
    lines += [f"{k} = {_fmt(float(v))}" for k, v in dev.peak_flops.items()]
    lines += ["", f"[{p}.power]", f"idle = {_fmt(float(dev.power.idle))}", f"max = {_fmt(float(dev.power.max))}",
              f"source = {_fmt(dev.power.source)}"]
    if dev.host_link:
        lines += ["", f"[{p}.host_link]", f"bandwidth = {_fmt(dev.host_link.bandwidth)}",
                  f"latency = {_fmt(dev.host_link.latency)}", f"kind = {_fmt(dev.host_link.kind)}"]
    if dev.efficiency:
        lines += ["", f"[{p}.efficiency]"]
        lines += [f"{_key(k)} = {_fmt({'max': e.max, 'half_work': e.half_work, 'source': e.source})}"
                  for k, e in dev.efficiency.items()]
    if dev.gemm_pack:
        lines += ["", f"[{p}.gemm_pack]"]
        lines += [f"{_key(k)} = {_fmt([list(pt) for pt in v])}" for k, v in dev.gemm_pack.items()]
    if dev.calibration:
        lines += ["", f"[{p}.calibration]"]
        lines += [f"{_key(k)} = {_fmt(v)}" for k, v in dev.calibration.items()]
    for lv in dev.memory:
        lines += ["", f"[[{p}.memory]]", f"name = {_fmt(lv.name)}", f"capacity = {_fmt(float(lv.capacity))}",
                  f"bandwidth = {_fmt(float(lv.bandwidth))}", f"granularity = {lv.granularity}"]
        if lv.latency is not None:
            lines.append(f"latency = {_fmt(float(lv.latency))}")
        if (lv.spill_start, lv.spill_span) != (0.25, 4.0):
            lines += [f"spill_start = {_fmt(float(lv.spill_start))}", f"spill_span = {_fmt(float(lv.spill_span))}"]
    return "\n".join(lines) + "\n"


def write_device(dev: Device, path: Path, header: str = "") -> Path:
    """Write ``dev`` atomically, after checking the text parses back to the same device."""
    from leanml.io import atomic_write_text

    text = device_to_toml(dev, header)
    back = parse_device(dev.id, tomllib.loads(text)["devices"][dev.id])
    if back != dev:
        raise AssertionError("device TOML did not round-trip; refusing to write a file that reads back differently")
    atomic_write_text(path, text)
    return Path(path)
