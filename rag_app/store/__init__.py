"""Store layer: LanceDB chunk tables (:mod:`.vector_store`), their schema, search, SQL and writer locks;
the one connection, local or object storage (:mod:`.connection`); table upkeep (:mod:`.upkeep`,
:mod:`.maintenance`).

``__all__`` lists what callers outside the store use; each name is defined in the module noted.
"""

from rag_app.store.vector_store import TableInfo, VectorStore, read_columns

__all__ = ["TableInfo", "VectorStore", "read_columns"]
