"""DAG integrity: every DAG imports without secrets or services and follows the house rules."""

from __future__ import annotations

import ast
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import REPO

DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY_MODULES = ("pyspark", "mlflow", "optuna", "evidently", "bentoml", "lightgbm", "pandas", "deltalake")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=REPO / "dags")


def test_every_dag_file_imports_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) >= len(DAG_FILES)


def test_every_dag_declares_schedule_start_catchup_tags_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.timetable is not None, dag_id
        assert isinstance(dag.start_date, datetime), dag_id
        assert dag.start_date.tzinfo is not None, dag_id
        assert dag.catchup is False, dag_id
        assert "driftloop" in dag.tags, dag_id
        assert len(dag.doc_md or "") > 80, dag_id
        assert dag.max_active_runs == 1, f"{dag_id}: concurrent runs would race on the same tables"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_keep_heavy_imports_out_of_module_level(path: Path):
    """DAG files are parsed constantly: Spark, MLflow and friends load only inside tasks."""
    tree = ast.parse(path.read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [alias.name for n in top_level for alias in n.names] + [
        n.module for n in top_level if isinstance(n, ast.ImportFrom) and n.module
    ]
    assert not [n for n in names if n.split(".")[0] in HEAVY_MODULES]


def test_dag_files_import_no_heavy_module_at_parse_time():
    """Importing every DAG file (as the dag-processor does) must not load Spark, MLflow or pandas."""
    import subprocess
    import sys

    code = (
        "import sys, runpy\n"
        f"for path in {[str(p) for p in DAG_FILES]!r}: runpy.run_path(path)\n"
        f"loaded = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print('LOADED=' + ','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("LOADED=")]
    assert line == "LOADED="


@pytest.mark.parametrize(
    ("conf", "bad"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"n_trials": "many"}, "n_trials"),
        ({"metric": "accuracy"}, "metric"),
        ({"timeout_minutes": -1}, "timeout_minutes"),
        ({"window_days": 0}, "window_days"),
        ({"reason": "x"}, "reason"),
    ],
)
def test_train_model_rejects_invalid_parameters_before_any_work(dagbag, conf, bad):
    """Airflow validates these when a run is created (REST returns 4xx): no task ever starts."""
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["train_model"].params)
    with pytest.raises(ParamValidationError, match=f"param {bad}"):
        params.update(conf)  # a ParamsDict validates on assignment, as a run's conf is applied


def test_train_model_accepts_a_valid_request(dagbag):
    import copy

    params = copy.deepcopy(dagbag.dags["train_model"].params)
    params.update({"n_trials": 5, "reason": "analyst request", "window_days": 7, "metric": "recall_at_fpr"})
    assert params.validate()["n_trials"] == 5
