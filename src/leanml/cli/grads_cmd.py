"""`leanml grads ...`: extract projected per-example gradient features into a gradient store."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from leanml.grads import defaults

app = typer.Typer(no_args_is_help=True)


@app.command("extract")
def extract_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name (see `leanml data list`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory (created, or resumed if it exists)."),
    split: str = typer.Option("train", help="Dataset split."),
    model: str = typer.Option("mlp", help="mlp | cnn | minilm-lora | smollm2-lora | smollm2-random-lora."),
    params: str = typer.Option("trainable",
                                help="Parameter subset: trainable | lora | all | comma-separated module names."),
    projector: str = typer.Option(defaults.PROJECTOR,
                                   help="auto (factorized where every parameter is a Linear layer's and the grad type "
                                        "is sgd, else dense) | factorized (LoGra-style) | dense (JL over the full "
                                        "gradient)."),
    dim: int = typer.Option(defaults.PROJECTION_DIM,
                             help="Feature dimension k (lower only if the factorized layers have fewer features)."),
    kind: str = typer.Option(defaults.PROJECTION_KIND, help="Random matrix entries: rademacher | gaussian."),
    seed: int = typer.Option(defaults.PROJECTION_SEED, help="Projection (and model init) seed."),
    grad_type: str = typer.Option("sgd", help="sgd | sign | adam (adam needs checkpoints with optimizer state)."),
    output: str = typer.Option("loss", help="Differentiate the loss, or TRAK's margin log(p/(1-p)) (classifiers; "
                                            "use margin for a store TRAK/DsDM will score)."),
    batch_size: int = typer.Option(32, help="Examples per batch (one shard per batch)."),
    limit: int = typer.Option(None, help="Use only the first N examples of the split."),
    lora_rank: int = typer.Option(8, help="LoRA rank for the transformer models."),
    max_len: int = typer.Option(128, help="Max tokens per example (text models)."),
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="Checkpoint file (torch.save dict with 'model', "
                                          "'optimizer'); repeat for several."),
    weight: list[float] = typer.Option([], "--weight", help="Weight per checkpoint (LESS: its learning rate)."),
    warmup_epochs: int = typer.Option(0,
                                       help="Train briefly first and use one checkpoint per epoch (no --checkpoint)."),
    codec: str = typer.Option("fp32", help="fp32 | fp16 | bf16 | int8 | int4 | int2 | sign1."),
    workers: int = typer.Option(1, help="Parallel worker processes (each writes its own part)."),
    backend: str = typer.Option("process", help="process | ray (Ray tasks; connects to a running cluster if any)."),
) -> None:
    """Compute per-example gradient features and append them to a store (resumable: rerun to continue)."""
    from leanml.grads.recipes import ExtractSpec, warmup
    from leanml.store import StoreError
    from leanml.store.extract import extract

    err = Console(stderr=True)
    try:
        spec = ExtractSpec(dataset=dataset, split=split, model=model, params=params,
                           projector=projector, dim=dim, kind=kind, seed=seed, grad_type=grad_type, output=output,
                           batch_size=batch_size, limit=limit, lora_rank=lora_rank, max_len=max_len,
                           checkpoints=[str(c) for c in checkpoint], weights=list(weight))
        if warmup_epochs and not checkpoint:
            spec = warmup(spec, out / "checkpoints", epochs=warmup_epochs)
        n = len(spec.ids()) * max(1, len(spec.checkpoints))
        with Progress(TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task("extract", total=n)
            store = extract(spec, out, codec=codec, workers=workers, backend=backend,
                            progress=lambda k: bar.advance(task, k))
            bar.update(task, completed=n)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, StoreError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    info = store.info()
    Console().print_json(json.dumps({k: info[k] for k in ("path", "dim", "codec", "checkpoints", "bytes_per_example")}))
