"""`leanml hw ...`: the device catalog, calibration of this machine, and cost predictions."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
_MODELS = ("mlp", "cnn", "minilm", "smollm2", "llama-7b")
_MODES = ("infer", "train", "grads", "prefill", "decode")
_LLM_MODES = ("prefill", "decode")


def _fail(msg: str) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


@app.command("list")
def list_cmd() -> None:
    """Catalog devices with peak rates, main-memory bandwidth and ridge points (FLOP/byte)."""
    from leanml.hw import load_catalog
    from leanml.hw.units import fmt_si

    try:
        cat = load_catalog()
    except Exception as e:  # a broken local calibration file must not hide the catalog's error message
        _fail(str(e))
    t = Table(title="leanml.hw catalog (peaks are dense: no sparsity)")
    for c in ("id", "class", "units", "fp32", "bf16", "main memory", "bandwidth", "ridge fp32", "ridge bf16", "power"):
        t.add_column(c, justify="left" if c in ("id", "class", "main memory") else "right")
    for dev_id, d in sorted(cat.devices.items()):
        mm = d.main_memory
        t.add_row(dev_id, d.cls, str(d.compute_units), fmt_si(d.peak_flops.get("fp32"), "FLOP/s"),
                  fmt_si(d.peak_flops.get("bf16"), "FLOP/s"), f"{mm.name} {fmt_si(mm.capacity, 'B')}",
                  fmt_si(mm.bandwidth, "B/s"), f"{d.ridge_point('fp32'):.1f}" if "fp32" in d.peak_flops else "-",
                  f"{d.ridge_point('bf16'):.1f}" if "bf16" in d.peak_flops else "-",
                  f"{d.power.idle:.0f}-{d.power.max:.0f} W")
    Console().print(t)
    if cat.systems:
        s = Table(title="systems")
        for c in ("id", "name", "devices", "links"):
            s.add_column(c)
        for sid, sy in sorted(cat.systems.items()):
            s.add_row(sid, sy.name, ", ".join(f"{k}={v.id}" for k, v in sy.instances.items()),
                      f"{len(sy.links)} ({sy.topology})")
        Console().print(s)


@app.command("show")
def show_cmd(name: str = typer.Argument(..., help="device id (see `leanml hw list`) or a device TOML file")) -> None:
    """Everything about one device: memory levels, ridge point per level, efficiency curves."""
    from leanml.hw import get_device
    from leanml.hw.units import fmt_si

    try:
        d = get_device(name)
    except Exception as e:
        _fail(str(e))
    c = Console()
    c.print(f"[bold]{d.id}[/bold]: {d.name} ({d.cls}, {d.compute_units} compute units, peaks: {d.peak_source})")
    c.print("peaks: " + ", ".join(f"{k} {fmt_si(v, 'FLOP/s')}" for k, v in d.peak_flops.items()))
    t = Table(title="memory levels")
    for col in ("level", "capacity", "bandwidth", "latency", "granularity", "ridge fp32 (FLOP/B)"):
        t.add_column(col, justify="right")
    for lv in d.memory:
        ridge = f"{d.ridge_point('fp32', lv.name):.2f}" if "fp32" in d.peak_flops else "-"
        t.add_row(lv.name, fmt_si(lv.capacity, "B"), fmt_si(lv.bandwidth, "B/s"), fmt_si(lv.latency, "s"),
                  f"{lv.granularity} B", ridge)
    c.print(t)
    if d.efficiency:
        e = Table(title="efficiency curves: eff(w) = max * w / (w + half_work)")
        for col in ("op", "max", "half_work", "source"):
            e.add_column(col)
        for k, v in d.efficiency.items():
            e.add_row(k, f"{v.max:.3f}", f"{v.half_work:.3g}", v.source)
        c.print(e)
    c.print(f"op overhead {fmt_si(d.op_overhead, 's')}, view {fmt_si(d.view_overhead, 's')}, "
            f"autograd {fmt_si(d.autograd_overhead, 's')} per kernel; power {d.power.idle:.1f}-{d.power.max:.1f} W "
            f"({d.power.source or 'no source given'})")


@app.command("validate")
def validate_cmd(
    files: list[Path] = typer.Argument(..., help="TOML files with [devices.*] / [systems.*] tables"),
) -> None:
    """Check device/system files against the schema; errors name the field."""
    from leanml.hw.catalog import load_catalog, load_files

    try:
        cat = load_files(files, base=load_catalog(include_local=False))
    except Exception as e:
        _fail(str(e))
    Console().print(f"[green]ok[/green]: {len(cat.devices)} devices, {len(cat.systems)} systems")


@app.command("calibrate")
def calibrate_cmd(
    quick: bool = typer.Option(False, "--quick", help="smaller sizes and fewer repetitions (seconds)"),
    out: Path | None = typer.Option(None, "--out", help="device file to write (default: the local cache)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: PyTorch's)"),
    device_id: str = typer.Option("local", "--id", help="device id inside the written file"),
    rounds: int = typer.Option(1, "--rounds", help="repeat every measurement in this many rounds, keeping the best"),
) -> None:
    """Measure this machine (GEMM per dtype, bandwidth per memory level, overheads) and write a device file."""
    import torch

    from leanml.hw.calibrate import calibrate, catalog_base_for_gpu
    from leanml.hw.catalog import local_device_path, write_device
    from leanml.hw.units import fmt_si

    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            _fail(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    c = Console(stderr=True)
    base = None
    if device == "cuda" and torch.cuda.is_available():
        base = catalog_base_for_gpu(torch.cuda.get_device_name(0))
    if rounds < 1:
        _fail(f"--rounds must be >= 1, got {rounds}")
    try:
        dev = calibrate(quick=quick, device=device, device_id=device_id, base=base, rounds=rounds,
                        log=lambda m: c.print(f"[dim]{m}[/dim]"))
    except Exception as e:
        _fail(str(e))
    finally:
        torch.set_num_threads(before)
    path = out or local_device_path()
    header = (f"{dev.name}: calibrated by `leanml hw calibrate{' --quick' if quick else ''}` on "
              f"{dev.calibration['date']}.\nEvery figure is the best of {dev.calibration['reps']} repetitions x "
              f"{rounds} round(s) (the machine may be shared with other processes; interference only slows a run).")
    write_device(dev, path, header)
    t = Table(title=f"{dev.id}: {dev.name}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in dev.peak_flops.items():
        t.add_row(f"GEMM {k}", fmt_si(v, "FLOP/s"))
    for k, why in dev.calibration.get("unsupported", {}).items():
        t.add_row(f"GEMM {k}", f"unsupported ({why})")
    for lv in dev.memory:
        t.add_row(f"{lv.name} triad bandwidth", fmt_si(lv.bandwidth, "B/s"))
    t.add_row("op overhead", fmt_si(dev.op_overhead, "s"))
    t.add_row("autograd overhead / kernel", fmt_si(dev.autograd_overhead, "s"))
    Console().print(t)
    Console().print(f"wrote {path}")


def _weights_dir(name: str) -> Path:
    from leanml.models.weights import WeightsNotInstalledError, weights_dir

    try:
        return weights_dir(name)
    except WeightsNotInstalledError as e:
        _fail(str(e))


def _smollm2_config():
    """SmolLM2-135M's architecture read from the packaged GGUF's metadata (cached: parsing takes seconds)."""
    from transformers import LlamaConfig

    from leanml.data import cache_dir

    cache = cache_dir("hw") / "smollm2_config.json"
    if cache.exists():
        return LlamaConfig(**json.loads(cache.read_text()))
    from gguf import GGUFReader

    from leanml.models.weights import SMOLLM2_GGUF

    r = GGUFReader(_weights_dir("smollm2") / SMOLLM2_GGUF)

    def get(key: str):
        return r.fields[key].contents()

    kw = {"hidden_size": get("llama.embedding_length"), "num_hidden_layers": get("llama.block_count"),
          "num_attention_heads": get("llama.attention.head_count"),
          "num_key_value_heads": get("llama.attention.head_count_kv"),
          "intermediate_size": get("llama.feed_forward_length"),
          "vocab_size": len(r.fields["tokenizer.ggml.tokens"].data),
          "max_position_embeddings": get("llama.context_length"), "rope_theta": get("llama.rope.freq_base"),
          "rms_norm_eps": get("llama.attention.layer_norm_rms_epsilon"), "tie_word_embeddings": True}
    from leanml.io import atomic_write_text

    atomic_write_text(cache, json.dumps(kw))
    return LlamaConfig(**kw)


def build_workload(model: str, batch: int, seq: int):
    """(module, inputs, targets) for a named model, on the meta device (shapes only, no weights)."""
    import torch

    if model not in _MODELS:
        _fail(f"--model must be one of {list(_MODELS)}, got {model!r}")
    if batch < 1 or seq < 1:
        _fail(f"--batch and --seq must be >= 1, got {batch}, {seq}")
    with torch.device("meta"):
        if model == "mlp":
            from leanml.models import build_mlp

            return build_mlp(64, 10, (128,)), torch.randn(batch, 64), torch.randint(0, 10, (batch,))
        if model == "cnn":
            from leanml.models import build_cnn

            return build_cnn(10, 3, 32), torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        if model == "minilm":
            from transformers import BertConfig, BertModel

            cfg = BertConfig.from_pretrained(_weights_dir("minilm"))
            m = BertModel(cfg, add_pooling_layer=False)
            return m, {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq))}, torch.zeros(
                batch, seq, cfg.hidden_size)
    from transformers import LlamaForCausalLM

    cfg = _smollm2_config()
    with torch.device("meta"):
        m = LlamaForCausalLM(cfg)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq))
        return m, {"input_ids": ids}, torch.randint(0, cfg.vocab_size, (batch, seq))


def _lora_module(module, rank: int, targets: list[str]):
    """Wrap a (meta-device) model with PEFT LoRA adapters; the base is frozen, as in LoRA fine-tuning."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(module, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets))


def _llm_shape(model: str):
    from leanml.hw.llm_ops import PRESETS, LLMShape

    return PRESETS["llama-7b"] if model == "llama-7b" else LLMShape.from_config(_smollm2_config(), "smollm2-135m")


def _print_phases(c, as_json: bool) -> None:
    from leanml.hw.units import fmt_si

    if as_json:
        print(json.dumps(c.to_dict()))
        return
    t = Table(title=f"{c.model} on {c.device}: {c.dtype}, batch {c.batch}, prompt {c.prompt_len}, "
                    f"generate {c.gen_len} ({c.source})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in (("time to first token (prefill)", fmt_si(c.ttft_s, "s")),
                 ("time per output token", fmt_si(c.tpot_s, "s")), ("tokens/s (batch)", f"{c.tokens_per_s:.4g}"),
                 ("bound (decode / prefill)", f"[bold]{c.decode_bound}[/bold] / {c.prefill_bound}"),
                 ("KV cache at the end", fmt_si(c.kv_cache_bytes, "B")), ("weights", fmt_si(c.weight_bytes, "B")),
                 ("source", c.source), ("calibration", c.calibration)):
        t.add_row(k, v)
    for k, v in c.notes.items():
        t.add_row(f"  {k}", v)
    Console().print(t)


@app.command("predict")
def predict_cmd(
    model: str = typer.Option(..., "--model", help="mlp, cnn, minilm, smollm2, or llama-7b (shape only)"),
    device: str = typer.Option("local", "--device", help="catalog device id (see `leanml hw list`) or a TOML file"),
    batch: int = typer.Option(32, "--batch", help="examples (sequences) per batch"),
    mode: str = typer.Option("infer", "--mode", help="infer, train (forward+backward), grads (per-example), "
                             "prefill or decode (LLMs: TTFT, time per output token, tokens/s)"),
    seq: int = typer.Option(128, "--seq", help="sequence length for minilm/smollm2 (infer, train)"),
    dtype: str | None = typer.Option(None, "--dtype", help="cost the run in fp32, tf32, bf16, fp16, fp8 or int8 "
                                     "(GEMMs at that peak); default: as traced (fp32), bf16 for prefill/decode"),
    dtype_fallback: str | None = typer.Option(None, "--dtype-fallback",
                                              help="peak to use (stated in the output) if the device lacks --dtype's"),
    lora_rank: int | None = typer.Option(None, "--lora-rank", help="train LoRA adapters of this rank only "
                                         "(frozen base: forward + input-gradient backward)"),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj", "--lora-targets",
                                     help="comma-separated projections that get adapters"),
    prompt_len: int = typer.Option(512, "--prompt-len", help="prefill/decode: prompt tokens per sequence"),
    gen_len: int = typer.Option(128, "--gen-len", help="prefill/decode: tokens generated per sequence"),
    unfused: bool = typer.Option(False, "--unfused-attention", help="prefill/decode: attention without a fused kernel"),
    no_overhead: bool = typer.Option(False, "--no-overhead", help="leave out per-kernel launch overhead"),
    as_json: bool = typer.Option(False, "--json", help="print the prediction as JSON"),
) -> None:
    """Predicted time, energy (estimate) and bound of a model's batch on a device; for LLMs (--mode prefill or
    decode) TTFT, time per output token and tokens/s. Always a prediction from the device entry: measured
    curves where `leanml hw calibrate` ran on it, datasheet figures otherwise (the output says which)."""
    from leanml.hw import get_device, predict, trace_inference, trace_per_example_grads, trace_train_step
    from leanml.hw.errors import HwError
    from leanml.hw.predict import calibration_source
    from leanml.hw.units import fmt_si

    if mode not in _MODES:
        _fail(f"--mode must be one of {list(_MODES)}, got {mode!r}")
    targets = [t.strip() for t in lora_targets.split(",") if t.strip()]
    try:
        dev = get_device(device)
        if lora_rank is not None and lora_rank < 1:
            raise HwError(f"--lora-rank must be >= 1, got {lora_rank}")
        if mode in _LLM_MODES or model == "llama-7b":
            if model not in ("smollm2", "llama-7b"):
                _fail(f"--mode {mode} needs an LLM: --model smollm2 or llama-7b")
            from leanml.hw.llm import predict_llm_phases, predict_llm_train

            shape = _llm_shape(model)
            if mode in _LLM_MODES:
                c = predict_llm_phases(shape, dev, dtype or "bf16", batch, prompt_len, gen_len if mode == "decode"
                                       else 1, fused_attention=not unfused, overhead=not no_overhead,
                                       dtype_fallback=dtype_fallback)
                return _print_phases(c, as_json)
            if mode != "train":
                _fail("--model llama-7b is costed from its shape: use --mode train, prefill or decode")
            p = predict_llm_train(shape, dev, dtype or "bf16", batch, seq, lora_rank=lora_rank,
                                  lora_targets=tuple(targets), fused_attention=not unfused, overhead=not no_overhead,
                                  dtype_fallback=dtype_fallback)
            prof = None
        else:
            module, x, y = build_workload(model, batch, seq)
            if lora_rank is not None:
                if model != "smollm2" or mode == "infer":
                    _fail("--lora-rank applies to --model smollm2 with --mode train or grads")
                module = _lora_module(module, lora_rank, targets)
            if mode == "infer":
                prof = trace_inference(module, x, name=model)
            elif mode == "train":
                prof = trace_train_step(module, x, y, name=model)
            else:
                if isinstance(x, dict):
                    _fail("--mode grads is supported for mlp and cnn (per-example gradients of a token model need "
                          "a per-sequence loss; use leanml.hw.trace_per_example_grads with your own loss)")
                prof = trace_per_example_grads(module, x, y, name=model)
            p = predict(prof, dev, dtype=dtype, dtype_fallback=dtype_fallback, overhead=not no_overhead)
            if lora_rank is not None:
                p.notes["training"] = (f"LoRA r{lora_rank} on {','.join(targets)} (PEFT adapters, traced): frozen "
                                       "base runs forward + input-gradient backward only")
    except (HwError, ValueError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps({"model": model, "device": dev.id, "batch": batch, "mode": mode, "source": "predicted",
                          **p.to_dict()}))
        return
    t = Table(title=f"{model} {mode} batch {batch}" + (f" seq {seq}" if model in ("minilm", "smollm2") else "")
              + f" on {dev.id} ({dev.name})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("predicted time", fmt_si(p.time_s, "s"))
    t.add_row("bound", f"[bold]{p.bound}[/bold]")
    t.add_row("energy (estimate)", f"{p.energy_j:.4g} J at {p.power_w:.1f} W")
    t.add_row("FLOPs", f"{p.flops:.4g}")
    t.add_row("bytes moved", fmt_si(p.bytes, "B"))
    t.add_row("kernels", str(len(prof.ops)) if prof is not None else f"{len(p.by_module)} per-op classes (shape)")
    t.add_row("compute / memory / overhead", " / ".join(fmt_si(v, "s") for v in (p.compute_s, p.memory_s,
                                                                                  p.overhead_s)))
    for k, v in sorted(p.by_kind.items(), key=lambda kv: -kv[1]):
        t.add_row(f"  time in {k}", fmt_si(v, "s"))
    for k in ("dtype", "training"):
        if k in p.notes:
            t.add_row(k, p.notes[k])
    t.add_row("calibration", calibration_source(dev))
    Console().print(t)


@app.command("collective")
def collective_cmd(
    system: str = typer.Option(..., "--system", help="system id (see `leanml hw list`)"),
    op: str = typer.Option("all_reduce", "--op", help="all_reduce, all_gather, reduce_scatter, broadcast"),
    nbytes: float = typer.Option(1e9, "--bytes", help="message size in bytes"),
) -> None:
    """Alpha-beta time of a collective over all devices of a system."""
    from leanml.hw import collective_time, get_system
    from leanml.hw.units import fmt_si

    try:
        s = get_system(system)
        t = collective_time(s, op, nbytes)
    except Exception as e:
        _fail(str(e))
    Console().print(f"{op} of {fmt_si(nbytes, 'B')} over {len(s.instances)} devices of {s.id} "
                    f"({s.collectives.get(op, 'alpha_beta')}): {fmt_si(t, 's')}")
