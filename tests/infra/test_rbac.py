"""The Kubernetes rights Terraform grants Airflow's task pods, against the calls driftloop makes.

The feature-job runner (include/driftloop/feature_jobs/kubernetes.py) and the deploy target
(include/driftloop/deploy/kubernetes.py) are driven through the official client against the fake
API server (tests/unit/fake_kube_api.py) along every path they have — for the runner: submit and
finish, replace an earlier try's failed driver, give up on a driver that cannot start, overrun
the timeout; for the deploy target: the calls driftloop.rollout makes to deploy the first
champion, run a canary to promotion or to a rollback, revert, stop and read its state — and each
request is turned into the RBAC verb and resource the API server would authorize. The Roles
``airflow-spark-submitter`` and ``airflow-rollout`` in terraform/modules/k8s-namespaces must
grant exactly those sets: a missing verb fails the task with HTTP 403 in the cluster, an extra
one (the ``sparkapplications`` grant the first once carried, the pods, events, list/watch and
update rights the second once carried) is a right nothing uses.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration

from driftloop.config import Settings, SparkJobSettings
from driftloop.deploy.base import VARIANTS
from driftloop.deploy.kubernetes import KubernetesTarget
from driftloop.feature_jobs import FeatureJobError
from driftloop.feature_jobs.kubernetes import KubernetesFeatureRunner, driver_name, render_job
from tests.infra.test_terraform import TF_ROOT, _hcl
from tests.unit.fake_kube_api import APPLY, FakeKubeApi, PodPlan, Recorded
from tests.unit.test_kubernetes_target import NS as SERVING_NS
from tests.unit.test_kubernetes_target import _target

NS = "spark-jobs"
RUN_KEY = "build_features/asset_triggered__2026-03-01T10:15:00+00:00"
POD = f"/api/v1/namespaces/{NS}/pods/{driver_name(RUN_KEY)}"
REPORT = {
    "bronze_version": 7,
    "features_version": 5,
    "previous_bronze_version": 6,
    "new_events": 1200,
    "rows_merged": 1380,
    "skipped": False,
}

Grant = tuple[str, str, str]  # (API group, resource[/subresource], verb)
PROMETHEUS_API = "/api/v1/query"  # the fake serves it too; not the Kubernetes API


def _settings(**job: Any) -> Settings:
    return Settings(
        profile="kubernetes",
        lake_root="s3a://acme-driftloop-lake/prod",
        spark_job=SparkJobSettings(namespace=NS, poll_seconds=0.01, **job),
    )


def _grants(request: Recorded, namespace: str = NS) -> set[Grant]:
    """What the API server authorizes for one request (namespaced paths only)."""
    parts = urllib.parse.unquote(request.path).strip("/").split("/")
    if parts[0] == "api":  # /api/v1/namespaces/{ns}/{resource}[/{name}[/{sub}]]
        group, rest = "", parts[2:]
    else:  # /apis/{group}/{version}/namespaces/{ns}/...
        group, rest = parts[1], parts[3:]
    assert rest[:2] == ["namespaces", namespace], f"{request.path}: outside the namespace the Role covers"
    resource, named = rest[2], len(rest) > 3
    if len(rest) > 4:
        resource = f"{resource}/{rest[4]}"
    if request.method == "GET":
        verbs = {"get"} if named else {"watch" if request.flag("watch") else "list"}
    elif request.method == "PATCH":
        # server-side apply also needs `create` when the object does not exist yet
        verbs = {"patch", "create"} if request.content_type == APPLY else {"patch"}
    else:
        verbs = {
            "POST": {"create"},
            "PUT": {"update"},
            "DELETE": {"delete"} if named else {"deletecollection"},
        }[request.method]
    return {(group, resource, verb) for verb in verbs}


def _role_grants(name: str) -> set[Grant]:
    resources = _hcl(TF_ROOT / "modules" / "k8s-namespaces" / "main.tf")["resource"]
    roles = {
        body["metadata"][0]["name"][0]: body
        for block in resources
        for body in block.get("kubernetes_role_v1", {}).values()
    }
    return {
        (group, resource, verb)
        for rule in roles[name]["rule"]
        for group in rule["api_groups"][0]
        for resource in rule["resources"][0]
        for verb in rule["verbs"][0]
    }


def _runner(fake: FakeKubeApi, **job: Any) -> KubernetesFeatureRunner:
    configuration = Configuration()
    configuration.host = fake.url
    return KubernetesFeatureRunner(_settings(**job), api_client=ApiClient(configuration))


def _succeeds(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(message=json.dumps(REPORT), log="features.done\n")
    _runner(fake).run(RUN_KEY)


def _replaces_a_failed_driver(fake: FakeKubeApi) -> None:
    failed = render_job(_settings(), RUN_KEY)[1]
    state = {"terminated": {"exitCode": 1, "message": json.dumps({"error": "S3 timed out"})}}
    failed["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {"name": "driver", "image": "x", "imageID": "", "ready": False, "restartCount": 0, "state": state}
        ],
    }
    fake.put(POD, failed)
    fake.pod_plan = PodPlan(message=json.dumps(REPORT))
    _runner(fake).run(RUN_KEY)


def _cannot_start(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(waiting_reason="ImagePullBackOff")
    with pytest.raises(FeatureJobError):
        _runner(fake).run(RUN_KEY)


def _overruns(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(reads_until_running=0, reads_until_done=None)
    with pytest.raises(FeatureJobError):
        _runner(fake, timeout_minutes=0.001).run(RUN_KEY)


PATHS: list[Callable[[FakeKubeApi], None]] = [_succeeds, _replaces_a_failed_driver, _cannot_start, _overruns]


def _used_grants(paths: list[Callable[[FakeKubeApi], None]], namespace: str) -> set[Grant]:
    """Every grant the requests of ``paths`` need, each path run against a fresh fake API."""
    used: set[Grant] = set()
    for path in paths:
        fake = FakeKubeApi().start()
        try:
            path(fake)
        finally:
            fake.stop()
        requests = [r for r in fake.requests if not r.path.startswith(PROMETHEUS_API)]
        assert requests, f"{path.__name__} made no API call"
        used |= {grant for request in requests for grant in _grants(request, namespace)}
    return used


def _assert_role_grants_exactly(role: str, used: set[Grant], caller: str) -> None:
    granted = _role_grants(role)
    assert not used - granted, f"{caller} needs rights {role} lacks: {sorted(used - granted)}"
    assert not granted - used, f"{role} grants rights {caller} never uses: {sorted(granted - used)}"


def test_spark_submitter_role_grants_exactly_what_the_runner_calls() -> None:
    used = _used_grants(PATHS, NS)
    _assert_role_grants_exactly("airflow-spark-submitter", used, "the feature-job runner")


# ------------------------------------------------------------ the deploy target ----
# Each path makes the deploy-target calls of one driftloop.rollout operation, in its order.


def _first_champion(fake: FakeKubeApi) -> None:
    """resolve_release on an empty namespace: stable is deployed, which creates the route."""
    target = _target(fake, prometheus_url=fake.url)
    assert target.status().variants["stable"].model_version is None
    target.deploy("stable", "7")


def _canary(fake: FakeKubeApi, version: str = "8") -> KubernetesTarget:
    """Rollout.start and the ladder's analysis windows, on a namespace serving stable 7."""
    target = _target(fake, prometheus_url=fake.url)
    target.deploy("stable", "7")
    if not target.status().variants["stable"].ready:  # Rollout.ensure_stable
        target.deploy("stable", "7")
    target.set_canary_weight(0)
    target.deploy("canary", version)
    for weight in (10, 50):
        target.set_canary_weight(weight)
        for variant in VARIANTS:
            target.metrics(variant)
    return target


def _promotes(fake: FakeKubeApi) -> None:
    """Rollout.promote: all traffic to the canary, new stable, weights back, canary stopped."""
    target = _canary(fake)
    target.set_canary_weight(100)
    target.deploy("stable", "8")
    target.set_canary_weight(0)
    target.remove("canary")
    assert target.status().variants["stable"].model_version == "8"


def _rolls_back(fake: FakeKubeApi) -> None:
    """Rollout.roll_back, retried once (a task retry finds the canary gone)."""
    target = _canary(fake)
    for _ in range(2):
        target.set_canary_weight(0)
        target.remove("canary")
    assert target.status().canary_weight == 0


def _reverts_under_a_concurrent_write(fake: FakeKubeApi) -> None:
    """revert_champion while someone else writes the route (a 409 on the weights, retried)."""
    target = _target(fake, prometheus_url=fake.url)
    target.deploy("stable", "8")
    fake.merge_conflicts = 1
    target.set_canary_weight(0)
    target.deploy("stable", "7")


DEPLOY_PATHS: list[Callable[[FakeKubeApi], None]] = [
    _first_champion,
    _promotes,
    _rolls_back,
    _reverts_under_a_concurrent_write,
]


def test_rollout_role_grants_exactly_what_the_deploy_target_calls() -> None:
    used = _used_grants(DEPLOY_PATHS, SERVING_NS)
    _assert_role_grants_exactly("airflow-rollout", used, "the deploy target")


def test_the_verb_mapping_sees_lists_watches_and_other_groups() -> None:
    """The comparison above is only as good as this mapping: check its less-used branches."""
    base = f"/apis/sparkoperator.k8s.io/v1beta2/namespaces/{NS}/sparkapplications"
    cases = [
        ("GET", base, {}, {("sparkoperator.k8s.io", "sparkapplications", "list")}),
        ("GET", base, {"watch": ["true"]}, {("sparkoperator.k8s.io", "sparkapplications", "watch")}),
        ("POST", base, {}, {("sparkoperator.k8s.io", "sparkapplications", "create")}),
        ("PUT", f"{base}/job/status", {}, {("sparkoperator.k8s.io", "sparkapplications/status", "update")}),
        ("DELETE", f"/api/v1/namespaces/{NS}/pods", {}, {("", "pods", "deletecollection")}),
        ("PATCH", POD, {}, {("", "pods", "patch")}),
        ("GET", f"{POD}/log", {}, {("", "pods/log", "get")}),
    ]
    for method, path, query, expected in cases:
        assert _grants(Recorded(method, path, query, None, None)) == expected, (method, path)
