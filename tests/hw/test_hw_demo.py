"""The `make demo` roofline section: a PNG and figures for this machine's workloads."""

from __future__ import annotations

import torch
from rich.console import Console

import leanml.hw.demo as demo
from leanml.hw.catalog import get_device


def test_roofline_section_writes_plot_and_returns_figures(tmp_path, monkeypatch):
    shipped = get_device("dev_vm")  # the calibrated file shipped for this machine (skips recalibrating)
    monkeypatch.setattr(demo, "local_device", lambda **kw: shipped)
    threads = torch.get_num_threads()
    with open(tmp_path / "log.txt", "w") as log:
        out = demo.roofline_section(tmp_path, Console(file=log))
    assert torch.get_num_threads() == threads  # restored
    png = tmp_path / "hw_roofline.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["plot"] == str(png) and out["device"] == "dev_vm"
    names = [w["name"] for w in out["workloads"]]
    assert any("MLP" in n for n in names) and any("CNN" in n for n in names) and any("matmul" in n for n in names)
    for w in out["workloads"]:
        assert w["measured_s"] > 0 and w["predicted_s"] > 0 and w["flops"] > 0 and w["intensity"] > 0
