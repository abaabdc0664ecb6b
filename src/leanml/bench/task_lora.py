"""A task-specialized LoRA variant of SmolLM2 for serving: adapters trained by the instruct suite's learner
(`leanml.bench.instruct.CausalLMLearner`: LoRA on q/k/v/o, completion cross-entropy, Adam) on one task's
examples, then merged into the weights (W + B A scaled), so that serving it costs exactly what its base
costs; a weight-only variant of the merged model (`leanml.serve.variants.llm.variant_model`) then makes it
cheaper too. It lives with the study (the top layer), which trains it; the serving layer only sees a model.

Trained adapters are cached under the data cache (``models/``), keyed by the task, the seed and every
training setting (`leanml.models.text.save_lora_adapter`: atomic, with the LoRA config in the file's
metadata); a later build loads them (seconds) instead of training again (minutes on CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TASKS = ("tydiqa",)


@dataclass(frozen=True)
class LoraRecipe:
    """What a task LoRA is trained on and how (validated)."""

    task: str = "tydiqa"
    language: str = "english"
    n_train: int = 96
    rank: int = 8
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 4
    max_len: int = 384
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"LoraRecipe: task must be one of {list(TASKS)}, got {self.task!r}")
        for f in ("n_train", "rank", "epochs", "batch_size", "max_len"):
            if getattr(self, f) < 1:
                raise ValueError(f"LoraRecipe: {f} must be >= 1, got {getattr(self, f)}")
        if not self.lr > 0:
            raise ValueError(f"LoraRecipe: lr must be positive, got {self.lr}")

    def key(self) -> str:
        return "-".join(f"{k}{v}" for k, v in asdict(self).items())


def learner(recipe: LoraRecipe, gen_tokens: int = 16):
    """The instruct suite's causal-LM learner with this recipe's settings (training and scoring)."""
    from leanml.bench.instruct import CausalLMLearner

    return CausalLMLearner(rank=recipe.rank, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                           max_len=recipe.max_len, gen_tokens=gen_tokens)


def task_data(recipe: LoraRecipe, n_eval: int) -> tuple[list[dict], list[dict]]:
    """(training records, disjoint evaluation items) of the recipe's task."""
    from leanml.bench.instruct import tydiqa_split

    return tydiqa_split(recipe.language, recipe.n_train, n_eval, recipe.seed)


def train_task_lora(recipe: LoraRecipe, records: list[dict]) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model with trained adapters, tokenizer, training report: losses and cost) of ``recipe``."""
    lrn = learner(recipe)
    model = lrn.new_model(recipe.seed)
    fit = lrn.fit(model, records, seed=recipe.seed)
    return model, lrn.tok, {"losses": fit.losses, "cost": fit.cost.to_dict()}


def adapter_path(recipe: LoraRecipe, cache: Path | None = None) -> Path:
    """Where the adapters of ``recipe`` are cached (``cache`` defaults to the data cache's ``models/``)."""
    from leanml.data import cache_dir

    return Path(cache if cache is not None else cache_dir("models")) / f"smollm2-lora-{recipe.key()}.safetensors"


def cached_task_lora(recipe: LoraRecipe, records: list[dict], cache: Path | None = None
                     ) -> tuple[Any, Any, dict[str, Any]]:
    """`train_task_lora`, or the cached adapters of an identical recipe (the report says which, and where the
    adapter file is: the smollm2 serving family's ``lora_adapter`` parameter takes that path)."""
    from leanml.models.text import load_smollm2, lora_from_adapter, save_lora_adapter

    path = adapter_path(recipe, cache)
    if path.exists():
        base, tok = load_smollm2()
        try:
            model = lora_from_adapter(base, path)
        except ValueError:
            path.unlink()  # a stale file (another peft layout) is retrained, never half-loaded
        else:
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            return model, tok, {"cached": str(path), "adapter": str(path)}
    model, tok, report = train_task_lora(recipe, records)
    save_lora_adapter(model, path)
    return model, tok, {**report, "adapter": str(path)}
