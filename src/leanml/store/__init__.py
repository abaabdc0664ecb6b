"""The gradient store: compressed, append-only, crash-safe, queryable projected gradient features."""

from leanml.store.ann import FaissIndex, recall_at_k
from leanml.store.codecs import CODECS, Codec, get_codec
from leanml.store.manifest import Manifest, StoreError, StoreMismatchError
from leanml.store.metadata import add_metadata, lookup, sql
from leanml.store.query.lookups import explain, nshot
from leanml.store.search import dsdm_scores, less_balanced, less_scores, score_all, topk, trak_scores
from leanml.store.store import GradientStore
from leanml.store.tasks import add_task, select

__all__ = [
    "CODECS", "Codec", "FaissIndex", "GradientStore", "Manifest", "StoreError", "StoreMismatchError",
    "add_metadata", "add_task", "dsdm_scores", "explain", "get_codec", "less_balanced", "less_scores", "lookup",
    "nshot", "recall_at_k",
    "score_all", "select", "sql", "topk", "trak_scores",
]
