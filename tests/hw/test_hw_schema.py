"""Schema validation: every error names the field; files round-trip; the catalog loads."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from leanml.hw.catalog import device_to_toml, load_catalog, load_files, write_device
from leanml.hw.errors import SchemaError
from leanml.hw.schema import parse_device
from leanml.hw.units import parse_quantity

GOOD = """
[devices.toy]
name = "Toy accelerator"
class = "gpu"
compute_units = 4
functions = ["gemm"]
peak_flops = { fp32 = "10 TFLOP/s", bf16 = 2e13 }
power = { idle = "10 W", max = "100 W" }

[[devices.toy.memory]]
name = "SRAM"
capacity = "8 MiB"
bandwidth = "10 TB/s"
latency = "10 ns"

[[devices.toy.memory]]
name = "HBM"
capacity = "16 GB"
bandwidth = "1 TB/s"
granularity = 32

[systems.pair]
name = "two toys"
instances = [{ id = "t", device = "toy", count = 2 }]
links = [{ a = "t0", b = "t1", bandwidth = "100 GB/s", latency = "2 us" }]
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "dev.toml"
    p.write_text(text)
    return p


def test_good_file_parses_with_units(tmp_path):
    cat = load_files([_write(tmp_path, GOOD)])
    d = cat.device("toy")
    assert d.peak_flops == {"fp32": 10e12, "bf16": 2e13}
    assert d.memory[0].capacity == 8 * 2**20 and d.memory[0].latency == pytest.approx(1e-8)
    assert d.memory[1].granularity == 32 and d.main_memory.name == "HBM"
    assert list(cat.system("pair").instances) == ["t0", "t1"]


@pytest.mark.parametrize("old,new,path", [
    ('bandwidth = "1 TB/s"', 'bandwidth = "1 furlongs"', "devices.toy.memory[1].bandwidth"),
    ('bandwidth = "1 TB/s"', "bandwidth = -5", "devices.toy.memory[1].bandwidth"),
    ('capacity = "16 GB"\n', "", "devices.toy.memory[1].capacity"),
    ('class = "gpu"', 'class = "quantum"', "devices.toy.class"),
    ('fp32 = "10 TFLOP/s"', 'fp33 = "10 TFLOP/s"', "devices.toy.peak_flops.fp33"),
    ('compute_units = 4', 'compute_units = 0', "devices.toy.compute_units"),
    ('compute_units = 4', 'compute_units = 4\ncolour = "red"', "devices.toy.colour"),
    ('idle = "10 W"', 'idle = "500 W"', "devices.toy.power.idle"),
    ('name = "HBM"', 'name = "SRAM"', "devices.toy.memory"),
    ('capacity = "8 MiB"', 'capacity = "80 GB"', "devices.toy.memory[1].capacity"),
    ('b = "t1"', 'b = "t9"', "systems.pair.links[0].b"),
    ('device = "toy"', 'device = "nope"', "systems.pair.instances[0].device"),
])
def test_errors_name_the_field(tmp_path, old, new, path):
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(SchemaError) as e:
        load_files([p])
    assert e.value.path == path, str(e.value)
    assert str(p) in str(e.value)  # the message names the file too


def test_bad_toml_syntax_names_file(tmp_path):
    p = _write(tmp_path, "[devices.toy\nname = 1")
    with pytest.raises(SchemaError, match="not valid TOML"):
        load_files([p])


def test_efficiency_out_of_range_is_rejected():
    d = tomllib.loads(GOOD)["devices"]["toy"]
    d["efficiency"] = {"matmul": {"max": 1.7}}
    with pytest.raises(SchemaError) as e:
        parse_device("toy", d)
    assert e.value.path == "devices.toy.efficiency.matmul.max"


def test_units():
    assert parse_quantity("4.8 TB/s", "bandwidth", "x") == pytest.approx(4.8e12)
    assert parse_quantity("32 KiB", "bytes", "x") == 32768
    assert parse_quantity("500 ns", "time", "x") == pytest.approx(5e-7)
    assert parse_quantity("1979 TOPS", "flops", "x") == pytest.approx(1.979e15)
    with pytest.raises(SchemaError):
        parse_quantity("4.8 TB", "bandwidth", "x")
    with pytest.raises(SchemaError):
        parse_quantity(True, "bytes", "x")


def test_device_round_trips_through_toml(tmp_path):
    cat = load_catalog(include_local=False)
    for dev in cat.devices.values():
        back = parse_device(dev.id, tomllib.loads(device_to_toml(dev))["devices"][dev.id])
        assert back == dev
    out = write_device(cat.device("h200"), tmp_path / "h200.toml", "copy of the catalog entry")
    assert load_files([out]).device("h200") == cat.device("h200")


def test_catalog_has_required_devices_with_dense_peaks():
    cat = load_catalog(include_local=False)
    for dev_id in ("h200", "h100_sxm", "a100_80gb", "gh200_hopper", "grace", "l4", "server_cpu"):
        assert dev_id in cat.devices
    assert "gh200" in cat.systems
    c2c = cat.system("gh200").link("cpu", "gpu")
    assert c2c.bandwidth == pytest.approx(450e9) and c2c.kind == "nvlink-c2c"  # 900 GB/s both directions
    # dense rates: half the datasheet's with-sparsity figures
    assert cat.device("h200").peak("bf16") == pytest.approx(989.5e12)
    assert cat.device("a100_80gb").peak("bf16") == pytest.approx(312e12)
    assert cat.device("l4").peak("fp8") == pytest.approx(242.5e12)
    assert "fp64" not in cat.device("l4").peak_flops  # no datasheet figure: not guessed
    # a machine calibrated here ships too, with measured peaks
    local = [d for d in cat.devices.values() if d.peak_source == "measured"]
    assert local and all(d.calibration for d in local)


def test_every_catalog_figure_has_a_source_comment():
    from leanml.hw.catalog import CATALOG_DIR

    for f in CATALOG_DIR.glob("*.toml"):
        text = f.read_text()
        assert text.lstrip().startswith("#"), f"{f.name} must open with its sources"
        assert "Source" in text or "calibrated" in text.lower(), f.name


def test_broken_local_calibration_warns_and_keeps_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANML_CACHE", str(tmp_path))
    from leanml.hw.catalog import local_device_path

    local_device_path().write_text("[devices.local]\nname = 'x'\n")
    with pytest.warns(UserWarning, match="ignoring this machine's calibration"):
        cat = load_catalog()
    assert "h200" in cat.devices and "local" not in cat.devices
