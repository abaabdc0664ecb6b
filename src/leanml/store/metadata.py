"""Per-example metadata in Parquet (id plus whatever the dataset offers), queryable with DuckDB."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from leanml.io import atomic_write_bytes

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore  # typed by what it uses: no import of store.py

METADATA_FILE = "metadata.parquet"


def _to_table(columns: Mapping[str, Sequence[Any]] | pa.Table) -> pa.Table:
    t = columns if isinstance(columns, pa.Table) else pa.table({k: list(v) if not isinstance(v, np.ndarray) else v
                                                               for k, v in columns.items()})
    if "id" not in t.column_names:
        raise ValueError("metadata: needs an 'id' column (the example ids used in the store)")
    return t.set_column(t.column_names.index("id"), "id", t.column("id").cast(pa.int64()))


def add_metadata(store: GradientStore, columns: Mapping[str, Sequence[Any]] | pa.Table) -> int:
    """Add or replace rows (by id) of the store's metadata table; written atomically. Returns its row count."""
    new = _to_table(columns)
    path = store.root / METADATA_FILE
    if store.manifest.metadata and path.exists():
        old = pq.read_table(path)
        keep = ~np.isin(old.column("id").to_numpy(), new.column("id").to_numpy())
        old = old.filter(pa.array(keep))
        new = pa.concat_tables([old, new], promote_options="permissive")
    buf = io.BytesIO()
    pq.write_table(new, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    entry = {"file": METADATA_FILE, "sha256": hashlib.sha256(data).hexdigest(), "rows": new.num_rows,
             "columns": new.column_names}

    def change(m):  # noqa: ANN001, ANN202
        m.metadata = entry
    store._commit_manifest_change(change)
    return new.num_rows


def sql(store: GradientStore, query: str) -> pa.Table:
    """Run DuckDB SQL with a ``metadata`` view over the store's Parquet file (and ``ids`` of the first checkpoint)."""
    import duckdb

    if not store.manifest.metadata:
        raise ValueError(f"{store.root}: the store has no metadata; add it with store.add_metadata(...)")
    con = duckdb.connect()
    try:
        path = str(store.root / store.manifest.metadata["file"]).replace("'", "''")
        con.execute(f"CREATE VIEW metadata AS SELECT * FROM read_parquet('{path}')")
        return con.sql(query).to_arrow_table()
    finally:
        con.close()


def lookup(store: GradientStore, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Metadata rows for ``ids`` in the given order ({"id": i} alone where none is stored)."""
    ids = [int(i) for i in ids]
    if not store.manifest.metadata or not ids:
        return [{"id": i} for i in ids]
    import duckdb

    con = duckdb.connect()
    try:
        path = str(store.root / store.manifest.metadata["file"]).replace("'", "''")
        con.register("wanted", pa.table({"id": pa.array(ids, pa.int64())}))
        t = con.sql(f"SELECT m.* FROM read_parquet('{path}') m JOIN wanted w USING (id)").to_arrow_table()
    finally:
        con.close()
    rows = {r["id"]: r for r in t.to_pylist()}
    return [rows.get(i, {"id": i}) for i in ids]
