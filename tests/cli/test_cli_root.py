import json
import subprocess
import sys

from typer.testing import CliRunner

from leanml.cli.main import app

runner = CliRunner()


def test_help_lists_command_groups():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("data", "meter"):
        assert cmd in r.output


def test_every_command_has_help():
    import typer.main

    click_app = typer.main.get_command(app)

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path in walk(click_app, []):
        r = runner.invoke(app, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Usage" in r.output


def test_meter_command_meters_a_child_process(tmp_path):
    out = tmp_path / "cost.json"
    r = subprocess.run(
        [sys.executable, "-m", "leanml.cli.main", "meter", "--json", str(out), "--",
         sys.executable, "-c", "sum(range(10**7))"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "wall_s" in r.stderr and "unavailable" in r.stderr
    cost = json.loads(out.read_text())
    assert cost["cpu_s"] > 0.05 and cost["peak_rss_bytes"] > 0


def test_meter_command_passes_exit_code_and_reports_missing_command():
    r = subprocess.run([sys.executable, "-m", "leanml.cli.main", "meter", "--", sys.executable, "-c",
                        "raise SystemExit(3)"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3
    r = subprocess.run([sys.executable, "-m", "leanml.cli.main", "meter", "--", "no-such-cmd-xyz"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 127 and "command not found" in r.stderr
