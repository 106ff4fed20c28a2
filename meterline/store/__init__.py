"""The store: ClickHouse, embedded (chdb) or a server, behind one small interface.

Both backends are clickhouse-connect clients (``interface="chdb"`` or HTTP), so the
same SQL runs everywhere. Pick one with :func:`open_store`.
"""

from meterline.store.backend import Store, StoreError, open_store
from meterline.store.migrations import TRACES_TABLE, USAGE_TABLE

__all__ = ["TRACES_TABLE", "USAGE_TABLE", "Store", "StoreError", "open_store"]
