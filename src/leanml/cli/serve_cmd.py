"""`leanml serve ...`: profile variants on this machine, start the server (embedded or on Ray Serve)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Adaptive serving: profile variants, start the server, replay traces.")
console = Console()


def _load(config: Path):
    from leanml.serve.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if cfg.server.torch_threads > 0:
        import os

        import torch

        torch.set_num_threads(cfg.server.torch_threads)
        # scikit-learn's OpenMP runtime (gradient boosting) loads later and reads this when it does;
        # without it each call spins up one thread per core, and on a shared machine the tails explode
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.server.torch_threads))
    return cfg


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _profile_table(dep: str, profiles: dict) -> Table:
    t = Table(title=f"deployment {dep}", title_justify="left")
    for c in ("variant", "technique", "accuracy", "p50 ms (b=1)", "p99 ms (b=1)", "best rps", "memory", "J/request"):
        t.add_column(c, justify="left" if c in ("variant", "technique") else "right")
    for n, p in profiles.items():
        b1 = min(p.latency.p50_ms)
        e = p.energy_j_per_request
        t.add_row(n, str(p.extra.get("technique", "")), f"{p.accuracy:.4f}", f"{p.latency.p50_ms[b1]:.3f}",
                  f"{p.latency.p99_ms[b1]:.3f}", f"{max(p.throughput_rps.values()):.0f}" if p.throughput_rps else "n/a",
                  _fmt_bytes(p.memory_bytes), f"{e:.4g}" if e is not None else "unavailable")
    return t


@app.command("profile")
def profile_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Deploy config (TOML), e.g. examples/adult.toml."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Profile file to write (default: server.profile_file "
                                    "of the config, else <config>.profile.json)."),
    deployment: list[str] = typer.Option([], "--deployment", "-d", help="Only these deployments (repeatable)."),
) -> None:
    """Measure every variant (accuracy, latency p50/p99 by batch size, throughput, memory, energy); write the file."""
    from leanml.serve.builder import VariantBuilder
    from leanml.serve.control.profiles import load_profiles, save_profiles

    cfg = _load(config)
    path = out or cfg.server.profile_file or config.with_suffix(".profile.json")
    unknown = [d for d in deployment if d not in cfg.deployments]
    if unknown:
        console.print(f"[red]error:[/red] --deployment {unknown} not in {config} (has {sorted(cfg.deployments)})")
        raise typer.Exit(2)
    existing = {}
    if Path(path).exists():
        try:
            existing = load_profiles(path)
        except ValueError as e:
            console.print(f"[yellow]warning:[/yellow] {e}; it will be replaced")
    builder = VariantBuilder()
    result = dict(existing)
    for name, dc in cfg.deployments.items():
        if deployment and name not in deployment:
            continue
        console.print(f"profiling [bold]{name}[/bold] ({dc.prototype}: {', '.join(dc.variants)}) ...")
        variants = builder.build(dc, force_measure=True)
        result[name] = {n: v.profile for n, v in variants.items()}
        console.print(_profile_table(name, result[name]))
        save_profiles(path, result)  # after each deployment, so a long run keeps what it measured
    console.print(f"wrote {path}")


@app.command("start")
def start_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Deploy config (TOML)."),
    backend: str = typer.Option("embedded", "--backend", help="embedded (asyncio + uvicorn) or ray (Ray Serve)."),
    host: str | None = typer.Option(None, "--host", help="Bind address (default: server.host, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: server.port)."),
    profiles: Path | None = typer.Option(None, "--profiles", help="Profile file (default: server.profile_file)."),
) -> None:
    """Start serving the config's deployments (profiles reloaded from the profile file; missing ones measured)."""
    from leanml.serve.control.profiles import load_profiles, save_profiles

    if backend not in ("embedded", "ray"):
        console.print(f"[red]error:[/red] --backend must be 'embedded' or 'ray', got {backend!r}")
        raise typer.Exit(2)
    cfg = _load(config)
    logging.basicConfig(level=cfg.server.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    pfile = profiles or cfg.server.profile_file
    loaded = {}
    if pfile is not None and Path(pfile).exists():
        try:
            loaded = load_profiles(pfile)
        except ValueError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
    elif pfile is not None:
        console.print(f"[yellow]no profile file at {pfile}: variants are measured now "
                      f"(run `leanml serve profile --config {config}` to keep them)[/yellow]")
    h, p = host or cfg.server.host, port if port is not None else cfg.server.port
    if cfg.server.admin_token is None:
        console.print("[yellow]admin API disabled (no server.admin_token / LEANML_SERVE_ADMIN_TOKEN)[/yellow]")
    if backend == "ray":
        from leanml.serve.ray_backend import run_ray

        console.print(f"starting Ray Serve on http://{h}:{p} ...")
        run_ray(cfg, loaded, host=h, port=p)
        return
    from leanml.serve.builder import build_runtime
    from leanml.serve.control.controller import attach_controllers
    from leanml.serve.dataplane.http import build_app, serve

    rt = build_runtime(cfg, loaded)
    attach_controllers(rt)  # planned policies (adaptive, proteus) re-plan on their own clock and on drift
    if pfile is not None and rt.builder.measured:
        merged = dict(loaded)
        for name, dep in rt.deployments.items():
            merged[name] = {n: v.profile for n, v in dep.variants.items() if v.profile is not None}
        save_profiles(pfile, merged)
    app_ = build_app(rt, admin_token=cfg.server.admin_token, max_body_bytes=cfg.server.max_body_bytes)
    console.print(f"serving {sorted(rt.deployments)} on http://{h}:{p} (threads: {rt.threads})")
    serve(app_, host=h, port=p, log_level=cfg.server.log_level)


# ---- `leanml serve replay`: trace replay against the simulator or a live server (leanml.serve.sim.replay) ----
from leanml.cli.replay_cmd import replay_command  # noqa: E402

app.command("replay")(replay_command)
