"""The `make demo` job: the whole closed loop on the embedded stack, narrated, then stopped.

It starts Airflow's four components on 127.0.0.1 over a fresh lake and MLflow store and lets
:class:`~driftloop.closed_loop.ClosedLoop` drive it: baseline data → ingest → features → first
champion → served traffic → drift injected → drift detected → retrain → canary → promoted, then
a deliberately slow candidate rolled back. It ends with a timeline of the stages.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec

# (label, first mark, last mark) of the timeline printed at the end
STAGES = (
    ("airflow stack started", "start", "stack_up"),
    ("baseline landed → ingested → featurized", "baseline_landed", "baseline_featurized"),
    ("first train_model (REST) → champion", "baseline_featurized", "first_champion"),
    ("champion → serving behind HAProxy", "first_champion", "first_champion_serving"),
    ("baseline traffic → first window judged", "first_champion_serving", "calm_judged"),
    ("drifted batch landed → featurized", "drift_landed", "drift_featurized"),
    ("drifted traffic → drift Asset event", "drift_traffic", "drift_event"),
    ("drift Asset event → train_model started", "drift_event", "retrain_started"),
    ("retrain → challenger registered", "retrain_started", "challenger_registered"),
    ("challenger → canary started", "challenger_registered", "canary_started"),
    ("canary → promoted", "canary_started", "promoted"),
    ("drifted traffic → new champion", "drift_traffic", "promoted"),
    ("slow candidate forced → rolled back", "promoted", "drill_over"),
)


def _fresh(settings: Settings) -> None:
    """The demo starts from nothing: no lake, MLflow store, studies, Airflow runs or servers."""
    from driftloop.deploy.local import LocalTarget

    LocalTarget(settings).stop_all()
    home = settings.data_dir / "airflow"
    leftovers = [
        Path(settings.lake_uri),
        settings.data_dir / "mlflow",
        settings.data_dir / "optuna.db",
        settings.data_dir / "serving",
        # the metadata DB with SQLite's sidecar files: a stale -shm makes the next migrate fail
        *(home / f"airflow.db{suffix}" for suffix in ("", "-wal", "-shm", "-journal")),
        home / "logs",
    ]
    for leftover in leftovers:
        if not leftover.exists():
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def run_demo(settings: Settings, spec: DatasetSpec, echo: Callable[[str], None]) -> dict:
    """The closed loop, end to end; returns the loop's report (marks in seconds, facts)."""
    from driftloop.closed_loop import ClosedLoop, loop_settings, loop_stack

    if not settings.lake_uri.startswith("/"):
        raise RuntimeError("the demo runs on the local profile: unset DRIFTLOOP_LAKE_ROOT")
    settings = loop_settings(settings)
    _fresh(settings)
    began = time.monotonic()
    echo(f"driftloop demo — the whole loop on 127.0.0.1; lake at {settings.lake_uri}")
    with loop_stack(settings, echo) as stack:
        users = "  ".join(f"{user} / {password}" for user, password in stack.credentials().items())
        echo(f"Airflow UI {stack.ui_url}  (users: {users})")
        loop = ClosedLoop(settings, spec, stack, echo=echo)
        loop.report.marks["start"] = 0.0
        loop.report.marks["stack_up"] = time.monotonic() - began
        loop.report.started = began
        report = loop.run()
        _print_timeline(report, echo)
        echo(f"MLflow store: {settings.tracking_uri}")
        echo(f"  browse it: .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}")
        echo(f"drift reports: {settings.lake_uri}/reports/drift/")
        echo("stopping the model servers, HAProxy and Airflow (`make up` keeps a stack running)")
    echo(f"done in {time.monotonic() - began:.0f}s")
    return {"marks": report.marks, "facts": report.facts}


def _print_timeline(report, echo: Callable[[str], None]) -> None:
    echo("\ntimeline")
    for label, first, last in STAGES:
        if first in report.marks and last in report.marks:
            echo(f"  {label:<45} {report.between(first, last):7.1f}s   (at {report.marks[last]:6.1f}s)")
    facts = report.facts
    traffic = facts.get("traffic") or {}
    echo(
        f"traffic: {traffic.get('requests', 0):,} requests, {traffic.get('failed', 0)} failed; "
        f"drill: {facts.get('drill', {}).get('phases', [])[-1:]}"
    )
