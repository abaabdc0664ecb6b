"""Cross-algebra queries over the gradient store: relational (DuckDB), spatial (exact scan / FAISS),
tensor (LESS/TRAK/inner scores) and graph (scipy.sparse.csgraph) steps in one cost-planned query.

    from leanml.store.query import Query
    Query(store).where("label = 1").score("less", target="val").top_fraction(0.05).dedup(0.95).run()

See docs/query.md.
"""

from leanml.store.query.errors import QueryError
from leanml.store.query.physical import IVF
from leanml.store.query.plan import Query, QueryOpRecord, default_host
from leanml.store.query.source import ArraySource, QuerySource, RowView, StoreSource, as_source
from leanml.store.query.steps import STEP_KINDS, Step, load_spec

__all__ = ["IVF", "STEP_KINDS", "ArraySource", "QueryOpRecord", "Query", "QueryError", "RowView", "QuerySource", "Step",
           "StoreSource", "as_source", "default_host", "load_spec"]
