"""`leanml hw ...` commands: list, show, validate, predict, calibrate, collective."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from leanml.cli.hw_cmd import app

runner = CliRunner()


def test_list_and_show():
    r = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "h200" in r.output and "gh200" in r.output
    r = runner.invoke(app, ["show", "h200"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "HBM3e" in r.output


def test_validate_reports_field_path(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[devices.x]\nname = "x"\nclass = "gpu"\ncompute_units = 1\npeak_flops = { fp32 = 1e12 }\n'
                   'power = { idle = 1, max = 2 }\n[[devices.x.memory]]\nname = "m"\ncapacity = 1e9\n'
                   'bandwidth = "fast"\n')
    r = runner.invoke(app, ["validate", str(bad)], env={"COLUMNS": "300"})
    assert r.exit_code == 2
    assert "devices.x.memory[0].bandwidth" in r.output.replace("\n", "")


def test_predict_json_and_bad_input():
    r = runner.invoke(app, ["predict", "--model", "cnn", "--device", "h200", "--batch", "8", "--mode", "train",
                            "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["device"] == "h200" and out["time_s"] > 0 and out["bound"] in ("compute", "memory", "overhead")
    r = runner.invoke(app, ["predict", "--model", "resnet9000", "--device", "h200"])
    assert r.exit_code == 2 and "--model" in r.output
    r = runner.invoke(app, ["predict", "--model", "mlp", "--device", "tpu_v9"])
    assert r.exit_code == 2 and "not in the catalog" in r.output


def test_predict_minilm_on_meta_device():
    r = runner.invoke(app, ["predict", "--model", "minilm", "--device", "l4", "--batch", "4", "--seq", "32",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["flops"] > 1e9


def test_calibrate_quick_writes_file(tmp_path):
    out = tmp_path / "me.toml"
    r = runner.invoke(app, ["calibrate", "--quick", "--threads", "1", "--out", str(out), "--id", "me"])
    assert r.exit_code == 0, r.output
    from leanml.hw.catalog import load_files

    assert load_files([out]).device("me").peak_flops["fp32"] > 0


def test_collective():
    r = runner.invoke(app, ["collective", "--system", "hgx_h200_8", "--op", "all_reduce", "--bytes", "1e9"])
    assert r.exit_code == 0 and "ms" in r.output


def test_predict_llm_phases_dtype_and_lora_options():
    r = runner.invoke(app, ["predict", "--model", "llama-7b", "--device", "h200", "--mode", "decode", "--batch", "1",
                            "--prompt-len", "256", "--gen-len", "8", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["source"] == "predicted" and d["decode_bound"] == "memory" and d["tpot_s"] > 0
    assert d["calibration"].startswith("datasheet")
    r = runner.invoke(app, ["predict", "--model", "llama-7b", "--device", "h100_sxm", "--mode", "train", "--batch",
                            "1", "--seq", "128", "--lora-rank", "16", "--json"])
    assert r.exit_code == 0, r.output
    assert "LoRA r16" in json.loads(r.output.strip().splitlines()[-1])["notes"]["training"]
    bad = [(["--dtype", "fp7"], "unknown dtype 'fp7'"), (["--lora-rank", "0", "--mode", "train"], "--lora-rank"),
           (["--dtype", "fp8", "--device", "a100_80gb"], "no fp8 peak"),
           (["--prompt-len", "4096", "--gen-len", "10"], "maximum context")]
    for extra, msg in bad:
        args = ["predict", "--model", "llama-7b", "--device", "h200", "--mode", "decode"] + extra
        r = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert r.exit_code == 2 and msg in r.output.replace("\n", ""), (extra, r.output)
