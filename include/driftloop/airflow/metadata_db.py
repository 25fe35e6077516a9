"""Connection arguments of the embedded stack's SQLite metadata database.

Airflow puts SQLite in WAL mode, so readers never wait, but writers take turns; pysqlite gives up
on a held lock after 5 s and the API server answers 500 ("database is locked"). On 2 busy cores a
scheduler loop, a task's state update and a REST call can queue longer than that, so the stack
lets a writer wait up to ``BUSY_TIMEOUT_S`` (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS`` and its
``_ASYNC`` twin name these dicts).
"""

from __future__ import annotations

BUSY_TIMEOUT_S = 30.0

# Airflow adds its own keys to the sync one in place (check_same_thread): two separate dicts
SYNC_CONNECT_ARGS: dict[str, object] = {"timeout": BUSY_TIMEOUT_S}
ASYNC_CONNECT_ARGS: dict[str, object] = {"timeout": BUSY_TIMEOUT_S}
