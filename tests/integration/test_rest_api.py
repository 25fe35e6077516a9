"""The REST API of the embedded Airflow stack: tokens, validated retrain triggers and roles.

The real api-server, scheduler, dag-processor and triggerer run over a small lake, and a
retrain is triggered with the curl recipe of the README, as an analyst would.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import airflow_client.client as airflow_client
import pytest
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.exceptions import ApiException
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

from driftloop.config import Settings
from driftloop.dataset import load_dataset_spec
from driftloop.registry import CHAMPION, RUN_KEY_TAG
from driftloop.stack import AirflowStack, ApiError
from tests.lakes import build_lake

pytestmark = pytest.mark.slow

DAG_ID = "train_model"
RUN_TIMEOUT_S = 600.0

# The README's recipe, verbatim: only AIRFLOW_URL and AIRFLOW_PASSWORD come from the environment.
RETRAIN_WITH_CURL = r"""
AIRFLOW_URL=${AIRFLOW_URL:-http://127.0.0.1:8080}
TOKEN=$(curl -sS --fail-with-body -X POST "$AIRFLOW_URL/auth/token" \
  -H 'Content-Type: application/json' \
  -d "{\"username\": \"admin\", \"password\": \"$AIRFLOW_PASSWORD\"}" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
curl -sS --fail-with-body -X POST "$AIRFLOW_URL/api/v2/dags/train_model/dagRuns" \
  -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"logical_date": null, "conf": {"n_trials": 2, "reason": "analyst request"}}'
"""

# The README's operator recipe (after the token lines of the recipe above), verbatim
CONTROL_WITH_CURL = r"""
curl -sS --fail-with-body -X POST "$AIRFLOW_URL/api/v2/dags/control_rollout/dagRuns" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"logical_date": null, "conf": {"action": "abort", "reason": "p99 alarms on the card API"}}'
"""
TOKEN_LINES = "\n".join(RETRAIN_WITH_CURL.strip().splitlines()[:5])


def test_the_recipes_are_the_readme_text():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert RETRAIN_WITH_CURL.strip() in readme
    assert CONTROL_WITH_CURL.strip() in readme


@pytest.fixture(scope="module")
def lake_settings(spark, tmp_path_factory) -> Settings:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("rest-api") / "data",
        training={"max_boost_rounds": 80},
        # loose floors and latency budget: the gate's logic is unit-tested, and the tasks share
        # 2 busy cores with the Airflow components
        gate={"latency_budget_ms": 500.0, "min_pr_auc": 0.05, "min_recall_at_fpr": 0.0},
    )
    build_lake(spark, settings, load_dataset_spec())
    return settings


@pytest.fixture(scope="module")
def stack(lake_settings):
    """The four Airflow components on 127.0.0.1 over the test lake (module scope: the stack
    costs ~1.4 GiB and CPU, so it stops when this module is done, not at the end of the session).

    Cron and Asset schedules are off, so the only runs are the ones these tests trigger.
    """
    with AirflowStack(lake_settings, job_schedules=False, echo=print) as running:
        running.wait_for_dags(DAG_ID, "control_rollout")
        running.unpause(DAG_ID)
        running.unpause("control_rollout")
        yield running


def _client(stack: AirflowStack, user: str) -> airflow_client.ApiClient:
    """The official Airflow Python client, authenticated as ``user``."""
    config = airflow_client.Configuration(host=stack.base_url, access_token=stack.token(user))
    return airflow_client.ApiClient(config)


def _run_count(stack: AirflowStack) -> int:
    with _client(stack, "admin") as api:
        return DagRunApi(api).get_dag_runs(DAG_ID).total_entries


def test_admin_gets_a_token_and_a_wrong_password_is_refused(stack):
    token = stack.token("admin")
    assert token.count(".") == 2  # a JWT

    with pytest.raises(ApiError) as refused:
        stack.token("admin", password="not-the-password")
    assert refused.value.status == 401
    assert "Invalid credentials" in str(refused.value.body)


@pytest.mark.parametrize(
    ("conf", "bad_param"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"metric": "accuracy"}, "metric"),
        ({"n_trials": 2, "timeout_minutes": -1}, "timeout_minutes"),
        ({"reason": "x"}, "reason"),
        ({"window_days": 0}, "window_days"),
    ],
)
def test_invalid_retrain_parameters_are_rejected_before_a_run_exists(stack, conf, bad_param):
    runs_before = _run_count(stack)
    with _client(stack, "admin") as api, pytest.raises(ApiException) as rejected:
        DagRunApi(api).trigger_dag_run(DAG_ID, TriggerDAGRunPostBody(logical_date=None, conf=conf))

    assert rejected.value.status == 400
    detail = json.loads(rejected.value.body)["detail"]
    assert f"param {bad_param}" in detail, detail
    assert _run_count(stack) == runs_before


def test_a_viewer_can_read_but_cannot_trigger_a_retrain(stack):
    with _client(stack, "viewer") as api:
        assert DAGApi(api).get_dag(DAG_ID).dag_id == DAG_ID
        with pytest.raises(ApiException) as forbidden:
            DagRunApi(api).trigger_dag_run(
                DAG_ID, TriggerDAGRunPostBody(logical_date=None, conf={"reason": "viewer tries"})
            )
    assert forbidden.value.status == 403


def test_the_readme_curl_recipe_retrains_and_registers_a_champion_tagged_rest(stack, lake_settings):
    import mlflow

    env = {
        **os.environ,
        "AIRFLOW_URL": stack.base_url,
        "AIRFLOW_PASSWORD": stack.credentials()["admin"],
    }
    triggered = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", RETRAIN_WITH_CURL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert triggered.returncode == 0, triggered.stderr + triggered.stdout
    run = json.loads(triggered.stdout)
    assert run["conf"] == {"n_trials": 2, "reason": "analyst request"}
    assert run["run_type"] == "manual"
    run_id = run["dag_run_id"]

    state = _wait_for_run(stack, run_id)
    if state != "success":
        tails = "\n".join(f"--- {path}\n{tail}" for path, tail in stack.task_log_tails(DAG_ID, run_id))
        pytest.fail(f"{DAG_ID} run ended {state}: {stack.task_states(DAG_ID, run_id)}\n{tails}")

    registry = mlflow.MlflowClient(lake_settings.tracking_uri)
    name = lake_settings.registered_model
    (version,) = registry.search_model_versions(f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_id}'")
    assert version.tags["trigger"] == "rest"
    assert version.tags["reason"] == "analyst request"
    assert registry.get_model_version_by_alias(name, CHAMPION).version == version.version


def _wait_for_run(stack: AirflowStack, run_id: str, dag_id: str = DAG_ID) -> str:
    """Poll the run with the official client until it finishes; returns its final state."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with _client(stack, "admin") as api:
        runs = DagRunApi(api)
        while time.monotonic() < deadline:
            state = runs.get_dag_run(dag_id, run_id).state.value
            if state in {"success", "failed"}:
                return state
            time.sleep(3)
    pytest.fail(
        f"{dag_id} run {run_id} not finished after {RUN_TIMEOUT_S:.0f}s: {stack.task_states(dag_id, run_id)}"
    )


def test_the_readme_operator_recipe_reaches_control_rollout_and_says_why_it_failed(stack):
    """With no canary under way the abort must fail loudly, not pretend; a bad action is a 400."""
    env = {**os.environ, "AIRFLOW_URL": stack.base_url, "AIRFLOW_PASSWORD": stack.credentials()["admin"]}
    triggered = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", TOKEN_LINES + "\n" + CONTROL_WITH_CURL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert triggered.returncode == 0, triggered.stderr + triggered.stdout
    run = json.loads(triggered.stdout)
    assert run["conf"] == {"action": "abort", "reason": "p99 alarms on the card API"}
    state = _wait_for_run(stack, run["dag_run_id"], dag_id="control_rollout")
    assert state == "failed"
    # the task's log file is completed by its supervisor a moment after the run state is final
    deadline = time.monotonic() + 30
    while True:
        logs = "\n".join(tail for _p, tail in stack.task_log_tails("control_rollout", run["dag_run_id"], 400))
        if "no rollout is under way" in logs or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "no rollout is under way" in logs, logs[-3000:]

    with _client(stack, "admin") as api, pytest.raises(ApiException) as rejected:
        DagRunApi(api).trigger_dag_run(
            "control_rollout",
            TriggerDAGRunPostBody(logical_date=None, conf={"action": "reboot", "reason": "typo"}),
        )
    assert rejected.value.status == 400
    assert "param action" in json.loads(rejected.value.body)["detail"]
