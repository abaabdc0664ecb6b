"""Cheap targeted baselines for text (Yin & Rush, ICLR 2025 found them compute-optimal at small
budgets): MiniLM embedding similarity and BM25 lexical similarity to the target examples.

Both reduce like LESS: mean similarity over a subtask's target examples, maximum over subtasks.
"""

from __future__ import annotations

import re

import numpy as np

from leanml.meter import stage
from leanml.models.weights import WeightsNotInstalledError, weights_dir
from leanml.select.base import Pool, ScoreSelector, SelectionError, Target, check_finite, register


def reduce_by_task(sim: np.ndarray, tasks: np.ndarray) -> np.ndarray:
    """(N, T) similarities -> (N,): mean over each subtask's columns, max over subtasks."""
    names = np.unique(tasks)
    return np.stack([sim[:, tasks == t].mean(1) for t in names], 1).max(1)


class MiniLMEncoder:
    """Sentence embeddings from all-MiniLM-L6-v2: mean pooling over tokens, L2-normalised."""

    def __init__(self, max_length: int = 128, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            path = weights_dir("minilm")
        except WeightsNotInstalledError as e:  # the study skips a method whose input is missing
            raise SelectionError(f"the embedding method needs the packaged MiniLM weights: {e}") from None
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                enc = self.tok(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
                h = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(e, dim=1).numpy())
        return np.concatenate(out).astype(np.float32)


@register
class EmbeddingSelector(ScoreSelector):
    """Cosine similarity of MiniLM sentence embeddings to the target examples."""

    method = "embedding"
    needs = ("texts",)
    needs_target = True

    def __init__(self, *, seed: int = 0, max_length: int = 128, batch_size: int = 64) -> None:
        super().__init__(seed=seed)
        self.max_length, self.batch_size = int(max_length), int(batch_size)

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        enc = MiniLMEncoder(self.max_length, self.batch_size)
        key = ("minilm", self.max_length)
        with stage("infer"):  # MiniLM forward passes
            if key not in pool.cache:  # a second target reuses the pool's embeddings
                pool.cache[key] = enc.encode(pool.texts)
            P = pool.cache[key]
            T = enc.encode(target.texts)
        return check_finite("embedding scores", reduce_by_task(P @ T.T, target.tasks))


_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@register
class BM25Selector(ScoreSelector):
    """BM25 (Okapi, ``rank_bm25``) score of each pool text for each target text as the query; each
    query's scores are divided by their maximum so long queries do not dominate the mean."""

    method = "bm25"
    needs = ("texts",)
    needs_target = True

    def __init__(self, *, seed: int = 0, k1: float = 1.5, b: float = 0.75) -> None:
        super().__init__(seed=seed)
        self.k1, self.b = float(k1), float(b)

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        try:
            from rank_bm25 import BM25Okapi
        except ImportError:
            raise SelectionError("the bm25 method needs rank-bm25 (the 'llm' extra)") from None
        docs = [tokenize(t) or ["<empty>"] for t in pool.texts]
        bm = BM25Okapi(docs, k1=self.k1, b=self.b)
        cols = []
        for q in target.texts:
            s = np.asarray(bm.get_scores(tokenize(q)), dtype=np.float64)
            cols.append(s / s.max() if s.max() > 0 else s)
        return check_finite("bm25 scores", reduce_by_task(np.stack(cols, 1), target.tasks))
