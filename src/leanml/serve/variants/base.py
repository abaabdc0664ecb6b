"""A `Variant` is a callable model plus its measured profile; `Model` is the one small base per kind.

Two kinds of model are served:

* ``predict``: a classifier. ``parse`` turns the JSON ``inputs`` of one request into an array of
  examples (validating the shape), ``predict`` maps a stacked batch to class probabilities.
* ``generate``: a text generator. ``generate`` maps a batch of prompts, each with its own knobs
  (max new tokens, KV-cache cap), to texts.
"""

from __future__ import annotations

import io
import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leanml.serve.types import VariantProfile


class InputError(ValueError):
    """The request's inputs do not fit the model (wrong shape, type or size); answered with a 4xx."""


class Model(ABC):
    """The computation behind a variant."""

    kind: str = "predict"

    @abstractmethod
    def parse(self, inputs: Any) -> Any:
        """Validate one request's inputs and return them in the form ``run`` batches (raises InputError)."""

    @abstractmethod
    def count(self, parsed: Any) -> int:
        """How many examples a parsed request holds (what batch limits count)."""

    @abstractmethod
    def run(self, items: list[Any], knobs: list[dict[str, Any]]) -> list[Any]:
        """Run one batch: one parsed input and one knob dict per request; one output per request."""

    def size_bytes(self) -> int | None:
        """Serialized size of the model (the memory its weights need), None if not measurable."""
        return None


class ClassifierModel(Model):
    """A classifier over fixed-shape float inputs; ``predict`` returns class probabilities (n, C)."""

    kind = "predict"

    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        self.input_shape = tuple(int(d) for d in input_shape)
        self.n_classes = int(n_classes)

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities for a float32 batch of shape (n, *input_shape)."""

    def parse(self, inputs: Any) -> np.ndarray:
        """A list of examples (or a single example) -> float32 array (n, *input_shape)."""
        try:
            X = np.asarray(inputs, dtype=np.float32)
        except (ValueError, TypeError) as e:
            raise InputError(
                f"inputs must be a list of numeric examples of shape {list(self.input_shape)}; "
                f"could not read them as numbers ({str(e).splitlines()[0]})"
            ) from None
        if X.shape == self.input_shape:
            X = X[None]
        if X.ndim != len(self.input_shape) + 1 or X.shape[1:] != self.input_shape:
            raise InputError(
                f"inputs have shape {list(X.shape)}; expected a list of examples each of shape "
                f"{list(self.input_shape)} (i.e. [n, {', '.join(map(str, self.input_shape))}])"
            )
        if X.shape[0] == 0:
            raise InputError("inputs is empty: send at least one example")
        if not np.isfinite(X).all():
            raise InputError("inputs contain NaN or infinity")
        return X

    def count(self, parsed: np.ndarray) -> int:
        return int(parsed.shape[0])

    def run(self, items: list[np.ndarray], knobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sizes = [len(x) for x in items]
        probs = self.predict(np.concatenate(items) if len(items) > 1 else items[0])
        out, start = [], 0
        for n in sizes:
            p = probs[start : start + n]
            out.append({"labels": p.argmax(1).tolist(), "probs": p.tolist()})
            start += n
        return out


class GeneratorModel(Model):
    """A text generator; each request carries prompts and its own generation knobs."""

    kind = "generate"
    default_max_new_tokens: int = 32  # tokens generated when a request names no max_new_tokens

    @abstractmethod
    def generate(self, prompts: list[str], max_new_tokens: list[int], kv_cache_cap: list[int | None],
                 min_new_tokens: list[int | None] | None = None) -> list[str]:
        """Generate one continuation per prompt, each within its own token limits (at least ``min_new_tokens``
        tokens where given: end-of-sequence is not allowed before)."""

    def parse(self, inputs: Any) -> list[str]:
        prompts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError("prompt must be a non-empty string or a non-empty list of strings")
        return prompts

    def count(self, parsed: list[str]) -> int:
        return len(parsed)

    def run(self, items: list[list[str]], knobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts, mnt, cap, mins, sizes = [], [], [], [], []
        for p, k in zip(items, knobs, strict=True):
            prompts += p
            # no max given: the model's default, raised to min_new_tokens (a request asking for at least
            # N tokens gets them rather than a silent cut at the default)
            default = max(self.default_max_new_tokens, int(k.get("min_new_tokens") or 0))
            mnt += [int(k.get("max_new_tokens") or default)] * len(p)
            cap += [k.get("kv_cache_cap")] * len(p)
            mins += [k.get("min_new_tokens")] * len(p)
            sizes.append(len(p))
        texts = self.generate(prompts, mnt, cap, mins if any(mins) else None)
        out, start = [], 0
        for n in sizes:
            out.append({"texts": texts[start : start + n]})
            start += n
        return out


@dataclass
class Variant:
    """A servable model and what is known about it: technique, base model, measured profile."""

    name: str
    model: Model
    technique: str = "base"  # base | int8 | bf16 | prune | prune_2_4 | distill | fewer_trees | ...
    params: dict[str, Any] = field(default_factory=dict)
    profile: VariantProfile | None = None

    @property
    def kind(self) -> str:
        return self.model.kind

    def __call__(self, inputs: Any, **knobs: Any) -> Any:
        """Run one request directly (no runtime): what the HTTP path must reproduce."""
        return self.model.run([self.model.parse(inputs)], [knobs])[0]


def serialized_size(obj: Any) -> int | None:
    """Bytes of ``obj`` serialized (torch state dict for modules, pickle otherwise)."""
    try:
        import torch

        if isinstance(obj, torch.nn.Module):
            buf = io.BytesIO()
            torch.save(obj.state_dict(), buf)
            return buf.getbuffer().nbytes
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    try:
        return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return None
