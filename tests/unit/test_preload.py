"""The scheduler's preload: every task library it names imports, and importing them leaves the
process safe to fork (no thread started), as the LocalExecutor forks each task from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_preloaded_modules_import_and_start_no_thread() -> None:
    probe = (
        "import json, threading\n"
        "from driftloop.airflow.preload import TASK_MODULES, preload\n"
        "failed = preload()\n"
        "print(json.dumps({'failed': failed, 'threads': threading.active_count(),"
        " 'modules': list(TASK_MODULES)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == []
    assert result["threads"] == 1, "an import started a thread: forking the scheduler would copy it half-done"
    assert {"mlflow", "evidently", "driftloop.monitoring"} <= set(result["modules"])


def test_a_module_that_fails_to_import_is_reported_not_raised() -> None:
    from driftloop.airflow.preload import preload

    assert preload(("json", "driftloop_no_such_module")) == ["driftloop_no_such_module"]


def test_the_embedded_and_the_compose_scheduler_run_through_the_preload() -> None:
    from driftloop.stack import AirflowStack

    (scheduler,) = [c for c in AirflowStack()._components() if c.name == "scheduler"]
    assert scheduler.module == "driftloop.airflow.preload"
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert compose["services"]["airflow-scheduler"]["command"][:3] == ["python", "-m", scheduler.module]
