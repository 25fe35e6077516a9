"""Airflow's CLI with the task libraries already imported: ``python -m driftloop.airflow.preload scheduler``.

Under the LocalExecutor every task instance is a fork of a worker, itself a fork of the scheduler,
and then imports what its task needs: pandas, scipy, pandera, MLflow, Evidently, pyspark — about
9 s of CPU on a 2-core machine, paid again by every task (a monitoring run's three tasks, each
ingest and feature task on the drift path). Imported once in the scheduler before it forks, they
are in every task from the start (copy-on-write pages, ~400 MB shared). Only imports: nothing
here opens a connection, starts a thread or configures logging, so forking stays safe (pyspark's
Connect client is imported, its gRPC channel is only created in the task).

The embedded stack (``driftloop.stack``) starts its scheduler this way; other executors (a pod or
a Celery worker per task) gain nothing from it.
"""

from __future__ import annotations

import importlib
import sys

# what the tasks import, heaviest first; each is a well-formed import that works without a server
TASK_MODULES = (
    "evidently",
    "evidently.presets",
    "mlflow",
    "mlflow.tracking",
    "scipy.stats",
    "pandas",
    "pyarrow",
    "deltalake",
    "pandera.pandas",
    "pyspark.sql",
    "pyspark.sql.connect.session",
    "driftloop.monitoring",
    "driftloop.registry",
    "driftloop.ingest",
    "driftloop.features",
    "driftloop.training",
)


def preload(modules: tuple[str, ...] = TASK_MODULES) -> list[str]:
    """Import ``modules``; returns the ones that failed (a missing one costs its task the import,
    never the scheduler its start)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # an optional speed-up: the task itself reports the real error
            failed.append(name)
    return failed


def main() -> int:
    failed = preload()
    if failed:
        print(f"driftloop preload: could not import {', '.join(failed)}", file=sys.stderr, flush=True)
    from airflow.__main__ import main as airflow_main

    return airflow_main() or 0


if __name__ == "__main__":
    sys.exit(main())
