"""The REST API of the embedded Airflow stack: tokens, validated retrain triggers and roles.

The real api-server, scheduler, dag-processor and triggerer run over a small lake, and a
retrain is triggered with the curl recipe of the README, as an analyst would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

# The README's feedback recipes (curl after the token lines, and the official Python client), verbatim
FEEDBACK_WITH_CURL = r"""
curl -sS --fail-with-body -X POST "$AIRFLOW_URL/api/v2/dags/record_feedback/dagRuns" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"logical_date": null, "conf": {"note": "weekly review", "items": [
        {"request_id": "632a9c0e41d84b6f", "kind": "false_positive", "reason": "customer confirmed it"},
        {"request_id": "no-such-request", "kind": "false_negative", "reason": "chargeback received"}]}}'
"""
FEEDBACK_WITH_PYTHON = r"""
import json
import os
import urllib.request

import airflow_client.client as airflow_client
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

url = os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080")
login = {"username": "admin", "password": os.environ["AIRFLOW_PASSWORD"]}
request = urllib.request.Request(
    f"{url}/auth/token", json.dumps(login).encode(), {"Content-Type": "application/json"}
)
token = json.load(urllib.request.urlopen(request))["access_token"]
items = [{"request_id": "7b4e1f02c9a34d58", "kind": "false_negative", "reason": "chargeback received"}]
with airflow_client.ApiClient(airflow_client.Configuration(host=url, access_token=token)) as api:
    run = DagRunApi(api).trigger_dag_run(
        "record_feedback", TriggerDAGRunPostBody(logical_date=None, conf={"items": items})
    )
print(run.dag_run_id)
"""

# The README's approval recipes (curl after the token lines, and the official Python client), verbatim
APPROVE_WITH_CURL = r"""
curl -sS --fail-with-body -X POST "$AIRFLOW_URL/api/v2/dags/review_challenger/dagRuns" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"logical_date": null, "conf": {"version": "'"$VERSION"'", "decision": "approve",
       "reason": "holdout and recent window reviewed"}}'
"""
REJECT_WITH_PYTHON = r"""
import json
import os
import urllib.request

import airflow_client.client as airflow_client
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

url = os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080")
login = {"username": "admin", "password": os.environ["AIRFLOW_PASSWORD"]}
request = urllib.request.Request(
    f"{url}/auth/token", json.dumps(login).encode(), {"Content-Type": "application/json"}
)
token = json.load(urllib.request.urlopen(request))["access_token"]
decision = {"version": os.environ["VERSION"], "decision": "reject", "reason": "trained on the outage week"}
with airflow_client.ApiClient(airflow_client.Configuration(host=url, access_token=token)) as api:
    run = DagRunApi(api).trigger_dag_run(
        "review_challenger", TriggerDAGRunPostBody(logical_date=None, conf=decision)
    )
print(run.dag_run_id)
"""


# The README's REST recipes (curl after the token lines, and the official Python client), verbatim:
# a retrain with parameters, an Asset event, the rollout status
RETRAIN_WITH_PYTHON = r"""
import json
import os
import urllib.request

import airflow_client.client as airflow_client
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

url = os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080")
login = {"username": "admin", "password": os.environ["AIRFLOW_PASSWORD"]}
request = urllib.request.Request(
    f"{url}/auth/token", json.dumps(login).encode(), {"Content-Type": "application/json"}
)
token = json.load(urllib.request.urlopen(request))["access_token"]
params = {"n_trials": 2, "metric": "recall_at_fpr", "timeout_minutes": 5, "reason": "quarterly model review"}
with airflow_client.ApiClient(airflow_client.Configuration(host=url, access_token=token)) as api:
    run = DagRunApi(api).trigger_dag_run("train_model", TriggerDAGRunPostBody(logical_date=None, conf=params))
print(run.dag_run_id)
"""

ASSET_EVENT_WITH_CURL = r"""
ASSET_ID=$(curl -sS --fail-with-body "$AIRFLOW_URL/api/v2/assets?name_pattern=driftloop.features" \
  -H "Authorization: Bearer $TOKEN" | python3 -c 'import json, sys
print(next(a["id"] for a in json.load(sys.stdin)["assets"] if a["name"] == "driftloop.features"))')
curl -sS --fail-with-body -X POST "$AIRFLOW_URL/api/v2/assets/events" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"asset_id": '"$ASSET_ID"', "extra": {"source": "feature-backfill",
       "reason": "features recomputed after the merchant-id fix"}}'
"""

ASSET_EVENT_WITH_PYTHON = r"""
import json
import os
import urllib.request

import airflow_client.client as airflow_client
from airflow_client.client.api.asset_api import AssetApi
from airflow_client.client.models.create_asset_events_body import CreateAssetEventsBody

url = os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080")
login = {"username": "admin", "password": os.environ["AIRFLOW_PASSWORD"]}
request = urllib.request.Request(
    f"{url}/auth/token", json.dumps(login).encode(), {"Content-Type": "application/json"}
)
token = json.load(urllib.request.urlopen(request))["access_token"]
extra = {"source": "feature-backfill", "reason": "second backfill pass"}
with airflow_client.ApiClient(airflow_client.Configuration(host=url, access_token=token)) as api:
    assets = AssetApi(api)
    found = assets.get_assets(name_pattern="driftloop.features").assets
    (asset,) = [a for a in found if a.name == "driftloop.features"]
    event = assets.create_asset_event(CreateAssetEventsBody(asset_id=asset.id, extra=extra))
print(event.id)
"""

ROLLOUT_STATUS_WITH_CURL = r"""
RUNS="$AIRFLOW_URL/api/v2/dags/deploy_model/dagRuns"
AUTH="Authorization: Bearer $TOKEN"
LATEST=$(curl -sS --fail-with-body "$RUNS?order_by=-run_after&limit=1" -H "$AUTH" \
  | python3 -c 'import json, sys
runs = json.load(sys.stdin)["dag_runs"]
if runs: print(runs[0]["dag_run_id"], runs[0]["state"])')
if [ -z "$LATEST" ]; then
  echo "no rollout yet: deploy_model has no runs"
else
  RUN_ID=${LATEST% *}
  echo "deploy_model run $RUN_ID: ${LATEST##* }"
  curl -sS --fail-with-body "$RUNS/$RUN_ID/taskInstances" -H "$AUTH" | python3 -c 'import json, sys
for t in json.load(sys.stdin)["task_instances"]: print(" ", t["task_id"], t["state"])'
  # canary_rollout's return value once the canary has ended; a 404 (none yet) before
  curl -sS "$RUNS/$RUN_ID/taskInstances/canary_rollout/xcomEntries/return_value" -H "$AUTH" \
    | python3 -c 'import json, sys
x = json.load(sys.stdin); print("  canary outcome:", json.dumps(x["value"]) if "value" in x else "none yet")'
fi
"""

ROLLOUT_STATUS_WITH_PYTHON = r"""
import json
import os
import urllib.request

import airflow_client.client as airflow_client
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.api.x_com_api import XComApi
from airflow_client.client.exceptions import NotFoundException

url = os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080")
login = {"username": "admin", "password": os.environ["AIRFLOW_PASSWORD"]}
request = urllib.request.Request(
    f"{url}/auth/token", json.dumps(login).encode(), {"Content-Type": "application/json"}
)
token = json.load(urllib.request.urlopen(request))["access_token"]
with airflow_client.ApiClient(airflow_client.Configuration(host=url, access_token=token)) as api:
    runs = DagRunApi(api).get_dag_runs("deploy_model", order_by=["-run_after"], limit=1).dag_runs
    if not runs:
        print("no rollout yet: deploy_model has no runs")
    else:
        run = runs[0]
        print(f"deploy_model run {run.dag_run_id}: {run.state.value}")
        for ti in TaskInstanceApi(api).get_task_instances("deploy_model", run.dag_run_id).task_instances:
            print(" ", ti.task_id, ti.state.value if ti.state else None)
        xcoms = XComApi(api)
        try:
            entry = xcoms.get_xcom_entry("deploy_model", "canary_rollout", run.dag_run_id, "return_value")
            print("  canary outcome:", json.dumps(entry.actual_instance.value))
        except NotFoundException:
            print("  canary outcome: none yet")
"""


def test_the_recipes_are_the_readme_text():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert RETRAIN_WITH_CURL.strip() in readme
    assert CONTROL_WITH_CURL.strip() in readme
    assert FEEDBACK_WITH_CURL.strip() in readme
    assert FEEDBACK_WITH_PYTHON.strip() in readme
    assert APPROVE_WITH_CURL.strip() in readme
    assert REJECT_WITH_PYTHON.strip() in readme
    assert RETRAIN_WITH_PYTHON.strip() in readme
    assert ASSET_EVENT_WITH_CURL.strip() in readme
    assert ASSET_EVENT_WITH_PYTHON.strip() in readme
    assert ROLLOUT_STATUS_WITH_CURL.strip() in readme
    assert ROLLOUT_STATUS_WITH_PYTHON.strip() in readme


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
        running.wait_for_dags(
            DAG_ID, "control_rollout", "record_feedback", "review_challenger", "deploy_model"
        )
        running.unpause(DAG_ID)
        running.unpause("control_rollout")
        running.unpause("record_feedback")
        running.unpause("review_challenger")
        running.unpause("deploy_model")
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


def _run_recipe(stack: AirflowStack, recipe: str, *, python: bool = False) -> str:
    """Run a README recipe as a reader would (bash after the token lines, or Python); its stdout."""
    command = (
        [sys.executable, "-c", recipe]
        if python
        else ["bash", "-euo", "pipefail", "-c", TOKEN_LINES + "\n" + recipe]
    )
    done = subprocess.run(
        command,
        env={
            **os.environ,
            "AIRFLOW_URL": stack.base_url,
            "AIRFLOW_PASSWORD": stack.credentials()["admin"],
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_the_readme_rollout_status_recipes_say_no_rollout_yet_then_read_the_latest_run(stack, lake_settings):
    """Before any deploy_model run both recipes say so; then they show the latest run, its tasks
    and the canary's outcome.

    The run is one that fails cheaply: with no champion yet resolve_release refuses to roll out
    (a run with a champion would start real model servers, which is what the rollout tests do).
    So this test runs before the retrain tests register one.
    """
    from driftloop.registry import Registry

    for recipe, python in ((ROLLOUT_STATUS_WITH_CURL, False), (ROLLOUT_STATUS_WITH_PYTHON, True)):
        assert _run_recipe(stack, recipe, python=python).strip() == "no rollout yet: deploy_model has no runs"

    assert Registry(lake_settings).alias_version(CHAMPION) is None, "run this test before a champion exists"
    run_id = stack.trigger("deploy_model", {"reason": "status recipe check"})
    assert _wait_for_run(stack, run_id, dag_id="deploy_model") == "failed"
    for recipe, python in ((ROLLOUT_STATUS_WITH_CURL, False), (ROLLOUT_STATUS_WITH_PYTHON, True)):
        lines = _run_recipe(stack, recipe, python=python).splitlines()
        assert lines[0] == f"deploy_model run {run_id}: failed"
        tasks = dict(line.split() for line in lines[1:-1])
        assert tasks["resolve_release"] == "failed"
        assert tasks["canary_rollout"] == "upstream_failed"
        assert lines[-1] == "  canary outcome: none yet"

    # a finished canary's outcome is canary_rollout's return value; write one as it returns it
    # (a real canary needs model servers) to read it back through both recipes
    outcome = {
        "rollout_id": run_id,
        "version": "2",
        "stable_version": "1",
        "outcome": "promoted",
        "reasons": ["passed all 3 canary steps"],
        "metrics": {},
    }
    stack.request(
        "POST",
        f"/api/v2/dags/deploy_model/dagRuns/{run_id}/taskInstances/canary_rollout/xcomEntries",
        json={"key": "return_value", "value": outcome},
    )
    for recipe, python in ((ROLLOUT_STATUS_WITH_CURL, False), (ROLLOUT_STATUS_WITH_PYTHON, True)):
        last = _run_recipe(stack, recipe, python=python).splitlines()[-1]
        assert last.startswith("  canary outcome: "), last
        assert json.loads(last.removeprefix("  canary outcome: ")) == outcome


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


def _feedback_rows(settings: Settings, run_id: str) -> list[dict]:
    from driftloop.lake import tables
    from driftloop.lake.names import FEEDBACK

    rows = [r for r in tables.read_table(settings, FEEDBACK).to_pylist() if r["submission_id"] == run_id]
    return sorted(rows, key=lambda r: r["item"])


@pytest.fixture(scope="module")
def served_requests(lake_settings) -> Settings:
    """Two logged predictions the README's feedback recipes name: one flagged, one let through."""
    import pyarrow as pa

    from driftloop.predictions import append_to_lake, log_schema

    rows = [
        {"request_id": "632a9c0e41d84b6f", "event_id": "fb-e1", "decision": True, "model_version": "1"},
        {"request_id": "7b4e1f02c9a34d58", "event_id": "fb-e2", "decision": False, "model_version": "1"},
    ]
    rows = [r | {"variant": "stable", "score": 0.9 if r["decision"] else 0.1} for r in rows]
    append_to_lake(lake_settings)(pa.Table.from_pylist(rows, schema=log_schema(load_dataset_spec())))
    return lake_settings


def test_the_readme_feedback_recipes_record_feedback_with_the_analyst_and_the_reasons(stack, served_requests):
    from driftloop.feedback import feedback_counts

    env = {**os.environ, "AIRFLOW_URL": stack.base_url, "AIRFLOW_PASSWORD": stack.credentials()["admin"]}
    with_curl = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", TOKEN_LINES + "\n" + FEEDBACK_WITH_CURL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert with_curl.returncode == 0, with_curl.stderr + with_curl.stdout
    curl_run = json.loads(with_curl.stdout)["dag_run_id"]
    assert _wait_for_run(stack, curl_run, dag_id="record_feedback") == "success"

    rows = _feedback_rows(served_requests, curl_run)
    assert [(r["request_id"], r["status"], r["label"]) for r in rows] == [
        ("632a9c0e41d84b6f", "accepted", 0),
        ("no-such-request", "rejected", None),
    ]
    assert rows[1]["rejection"].startswith("unknown request id 'no-such-request'")
    assert {(r["submitted_by"], r["note"]) for r in rows} == {("airflow-user:admin", "weekly review")}

    with_python = subprocess.run(
        [sys.executable, "-c", FEEDBACK_WITH_PYTHON],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert with_python.returncode == 0, with_python.stderr + with_python.stdout
    python_run = with_python.stdout.strip()
    assert _wait_for_run(stack, python_run, dag_id="record_feedback") == "success"
    (row,) = _feedback_rows(served_requests, python_run)
    assert (row["request_id"], row["event_id"], row["status"], row["label"]) == (
        "7b4e1f02c9a34d58",
        "fb-e2",
        "accepted",
        1,
    )
    counts = {(c["kind"], c["status"]): c["items"] for c in feedback_counts(served_requests)}
    assert counts == {
        ("false_positive", "accepted"): 1,
        ("false_negative", "rejected"): 1,
        ("false_negative", "accepted"): 1,
    }


@pytest.mark.parametrize(
    "conf",
    [
        {"items": [{"request_id": "632a9c0e41d84b6f", "kind": "fraud", "reason": "wrong kind"}]},
        {"items": [{"request_id": "632a9c0e41d84b6f", "kind": "false_positive"}]},
        {"items": []},
        {"note": "items forgotten"},
    ],
    ids=["unknown-kind", "no-reason", "no-items", "missing-items"],
)
def test_malformed_feedback_is_a_400_and_creates_no_run(stack, conf):
    with _client(stack, "admin") as api:
        runs = DagRunApi(api)
        before = runs.get_dag_runs("record_feedback").total_entries
        with pytest.raises(ApiException) as rejected:
            runs.trigger_dag_run("record_feedback", TriggerDAGRunPostBody(logical_date=None, conf=conf))
        assert rejected.value.status == 400
        assert "param items" in json.loads(rejected.value.body)["detail"]
        assert runs.get_dag_runs("record_feedback").total_entries == before


def test_a_resent_submission_under_its_own_run_id_is_a_409_not_a_second_submission(stack, served_requests):
    item = {"request_id": "no-such-request", "kind": "false_positive", "reason": "sent twice"}
    body = TriggerDAGRunPostBody(dag_run_id="feedback-resent-1", logical_date=None, conf={"items": [item]})
    with _client(stack, "admin") as api:
        DagRunApi(api).trigger_dag_run("record_feedback", body)
        with pytest.raises(ApiException) as conflict:
            DagRunApi(api).trigger_dag_run("record_feedback", body)
    assert conflict.value.status == 409
    assert _wait_for_run(stack, "feedback-resent-1", dag_id="record_feedback") == "success"
    assert len(_feedback_rows(served_requests, "feedback-resent-1")) == 1


def test_the_readme_approval_recipes_approve_and_reject_a_challenger_awaiting_approval(stack, lake_settings):
    """Two challengers in turn, each awaiting approval as deploy_model's await_approval leaves them."""
    from driftloop.approval import ApprovalStore, request_approval
    from driftloop.registry import CHALLENGER, Registry
    from tests.models import register_model

    store, registry = ApprovalStore(lake_settings), Registry(lake_settings)
    env = {**os.environ, "AIRFLOW_URL": stack.base_url, "AIRFLOW_PASSWORD": stack.credentials()["admin"]}

    approved = register_model(lake_settings, "good", alias=CHALLENGER, seed=11)
    request_approval(lake_settings, approved, "deploy-run-awaiting-1")
    triggered = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", TOKEN_LINES + "\n" + APPROVE_WITH_CURL],
        env=env | {"VERSION": approved},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert triggered.returncode == 0, triggered.stderr + triggered.stdout
    run = json.loads(triggered.stdout)
    assert run["conf"]["version"] == approved
    assert _wait_for_run(stack, run["dag_run_id"], dag_id="review_challenger") == "success"
    decision = store.status(approved).decision
    assert (decision.kind, decision.actor) == ("approved", "airflow-user:admin")
    assert (decision.reason, decision.run_id) == ("holdout and recent window reviewed", run["dag_run_id"])

    rejected = register_model(lake_settings, "good", alias=CHALLENGER, seed=12)
    request_approval(lake_settings, rejected, "deploy-run-awaiting-2")
    triggered = subprocess.run(
        [sys.executable, "-c", REJECT_WITH_PYTHON],
        env=env | {"VERSION": rejected},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert triggered.returncode == 0, triggered.stderr + triggered.stdout
    run_id = triggered.stdout.strip().splitlines()[-1]
    assert _wait_for_run(stack, run_id, dag_id="review_challenger") == "success"
    decision = store.status(rejected).decision
    assert (decision.kind, decision.actor, decision.reason) == (
        "rejected",
        "airflow-user:admin",
        "trained on the outage week",
    )
    tags = registry.client.get_model_version(registry.name, rejected).tags
    assert (tags["driftloop.status"], tags["driftloop.rejected_by"]) == ("rejected", "approval")
    assert registry.alias_version(CHALLENGER) is None


@pytest.mark.parametrize(
    ("conf", "bad_param"),
    [
        ({"version": "v7", "decision": "approve", "reason": "looks fine"}, "version"),
        ({"version": "7", "decision": "maybe", "reason": "looks fine"}, "decision"),
        ({"version": "7", "decision": "reject", "reason": "no"}, "reason"),
    ],
)
def test_a_malformed_decision_is_a_400_and_creates_no_run(stack, conf, bad_param):
    with _client(stack, "admin") as api:
        runs = DagRunApi(api)
        before = runs.get_dag_runs("review_challenger").total_entries
        with pytest.raises(ApiException) as rejected:
            runs.trigger_dag_run("review_challenger", TriggerDAGRunPostBody(logical_date=None, conf=conf))
        assert rejected.value.status == 400
        assert f"param {bad_param}" in json.loads(rejected.value.body)["detail"]
        assert runs.get_dag_runs("review_challenger").total_entries == before


def test_the_readme_python_recipe_retrains_with_its_parameters(stack, lake_settings):
    import mlflow

    run_id = _run_recipe(stack, RETRAIN_WITH_PYTHON, python=True).strip().splitlines()[-1]
    with _client(stack, "admin") as api:
        conf = DagRunApi(api).get_dag_run(DAG_ID, run_id).conf
    assert conf == {
        "n_trials": 2,
        "metric": "recall_at_fpr",
        "timeout_minutes": 5,
        "reason": "quarterly model review",
    }
    state = _wait_for_run(stack, run_id)
    if state != "success":
        tails = "\n".join(f"--- {path}\n{tail}" for path, tail in stack.task_log_tails(DAG_ID, run_id))
        pytest.fail(f"{DAG_ID} run ended {state}: {stack.task_states(DAG_ID, run_id)}\n{tails}")

    registry = mlflow.MlflowClient(lake_settings.tracking_uri)
    name = lake_settings.registered_model
    (version,) = registry.search_model_versions(f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_id}'")
    assert (version.tags["trigger"], version.tags["reason"]) == ("rest", "quarterly model review")


def test_the_readme_asset_event_recipes_post_driftloop_features_events_with_their_extra(stack):
    """Harmless here: the stack's Asset schedules are off, so no train_model run follows the event
    (the scheduler creates Asset-triggered runs only with job schedules on)."""
    from airflow_client.client.api.asset_api import AssetApi

    posted = json.loads(_run_recipe(stack, ASSET_EVENT_WITH_CURL))
    assert posted["asset_id"]
    assert posted["source_dag_id"] is None  # posted through the API, not by a task
    assert (
        posted["extra"].items()
        >= {"source": "feature-backfill", "reason": "features recomputed after the merchant-id fix"}.items()
    )
    second = int(_run_recipe(stack, ASSET_EVENT_WITH_PYTHON, python=True).strip().splitlines()[-1])

    with _client(stack, "viewer") as api:  # a viewer reads the events ...
        events = (
            AssetApi(api).get_asset_events(asset_id=posted["asset_id"], order_by=["-timestamp"]).asset_events
        )
    extras = {event.id: event.extra for event in events}
    assert extras[posted["id"]].items() >= {"reason": "features recomputed after the merchant-id fix"}.items()
    assert extras[second].items() >= {"source": "feature-backfill", "reason": "second backfill pass"}.items()

    with pytest.raises(ApiError) as forbidden:  # ... but cannot post one
        stack.request(
            "POST", "/api/v2/assets/events", user="viewer", json={"asset_id": posted["asset_id"], "extra": {}}
        )
    assert forbidden.value.status == 403
