"""The kubernetes deploy target: rendered objects against the real Kubernetes OpenAPI schemas and
checkov, and its API calls as the official client really sends them, to a fake API server.

No cluster exists here. Schemas: ``kubernetes-validate`` in strict mode (unknown fields fail) for
the lowest and newest Kubernetes versions we support; it has no Gateway API CRDs, so the
HTTPRoute is checked against a small JSON schema written here from the Gateway API v1 spec
(required fields, name/hostname patterns, weight and port ranges, list limits) — the CRD's CEL
rules are not reproduced. The wire tests point a real ``kubernetes.client.ApiClient`` at
tests/unit/fake_kube_api.py and assert method, path, query, Content-Type and body.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient, AppsV1Api, Configuration

from driftloop.config import ServingSettings, Settings
from driftloop.deploy import get_target
from driftloop.deploy.base import DeployError, MetricsSnapshot
from driftloop.deploy.kubernetes import (
    CHECKOV_SKIPS,
    FIELD_MANAGER,
    ROUTE_NAME,
    KubernetesTarget,
    WorkloadShape,
    backend_refs,
    check_image,
    render_deployment,
    render_route,
    render_variant,
    rollout_progress,
    route_weights,
)
from tests.unit import checkov_scan
from tests.unit.fake_kube_api import APPLY, MERGE, FakeKubeApi, RolloutPlan

# Pinned: the oldest Kubernetes minor we support (1.33; matchLabelKeys and
# unhealthyPodEvictionPolicy need 1.27+) and the newest kubernetes-validate 1.37 ships.
K8S_VERSIONS = ("1.33.0", "1.37.0")
NS = "driftloop-serving"
TOKEN = "s3cr3t-bearer-token-never-rendered"


def _settings(**serving: Any) -> Settings:
    return Settings(
        profile="kubernetes",
        lake_root="s3a://acme-driftloop-lake/prod",
        mlflow_tracking_uri="http://mlflow.mlflow.svc:5000",
        s3_endpoint_url="https://s3.eu-west-1.amazonaws.com",
        serving=ServingSettings(auth_token=TOKEN, workers=2, **serving),
    )


@pytest.fixture
def settings() -> Settings:
    return _settings()


def _all_objects(settings: Settings) -> list[dict[str, Any]]:
    return [
        *render_variant(settings, "stable", "7", replicas=2),
        *render_variant(settings, "canary", "8", replicas=2),
        render_route(settings, {"stable": 90, "canary": 10}),
    ]


# --------------------------------------------------------------------------- schemas ----


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_against_kubernetes_openapi(settings: Settings, version: str) -> None:
    kinds = []
    for obj in _all_objects(settings):
        if obj["kind"] == "HTTPRoute":
            continue  # a CRD: see test_route_matches_gateway_api_v1_schema
        kubernetes_validate.validate(obj, version, strict=True)
        kinds.append(obj["kind"])
    assert sorted(set(kinds)) == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_strict_schema_validation_has_teeth(settings: Settings) -> None:
    deployment = render_deployment(settings, "stable", "7")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    deployment = render_deployment(settings, "stable", "7")
    deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = [0]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# Written from the Gateway API v1 HTTPRoute reference (standard channel): only the fields we
# render, with their documented constraints; additionalProperties false catches typos.
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_GROUP = r"^$|" + _DNS_SUBDOMAIN
_KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
HTTPROUTE_V1_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
                "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "parentRefs": {
                    "type": "array",
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "group": {"type": "string", "maxLength": 253, "pattern": _GROUP},
                            "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": _KIND},
                            "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
                            "name": {"type": "string", "minLength": 1, "maxLength": 253},
                            "sectionName": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        },
                    },
                },
                "hostnames": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 253,
                        "pattern": r"^(\*\.)?" + _DNS_SUBDOMAIN[1:],
                    },
                },
                "rules": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matches": {
                                "type": "array",
                                "maxItems": 64,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "path": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {
                                                    "enum": ["Exact", "PathPrefix", "RegularExpression"]
                                                },
                                                "value": {
                                                    "type": "string",
                                                    "maxLength": 1024,
                                                    "pattern": "^/",
                                                },
                                            },
                                        }
                                    },
                                },
                            },
                            "backendRefs": {
                                "type": "array",
                                "maxItems": 16,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    # port is required for a Service backend (a CEL rule in the CRD)
                                    "required": ["name", "port"],
                                    "properties": {
                                        "group": {"type": "string", "maxLength": 253, "pattern": _GROUP},
                                        "kind": {"type": "string", "maxLength": 63, "pattern": _KIND},
                                        "name": {"type": "string", "minLength": 1, "maxLength": 253},
                                        "namespace": {
                                            "type": "string",
                                            "maxLength": 63,
                                            "pattern": _DNS_LABEL,
                                        },
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("canary", [0, 1, 10, 50, 99, 100])
def test_route_matches_gateway_api_v1_schema(settings: Settings, canary: int) -> None:
    route = render_route(settings, {"stable": 100 - canary, "canary": canary})
    jsonschema.validate(route, HTTPROUTE_V1_SCHEMA)
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert sum(r["weight"] for r in refs) == 100
    assert all(r["weight"] > 0 and r["port"] == 3000 and r["kind"] == "Service" for r in refs)
    assert route_weights(route) == {"stable": 100 - canary, "canary": canary}
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": settings.serving.gateway,
            "sectionName": settings.serving.gateway_listener,
        }
    ]
    assert route["spec"]["hostnames"] == [settings.serving.hostname]


def test_route_schema_has_teeth(settings: Settings) -> None:
    route = render_route(settings, {"stable": 90, "canary": 10})
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 1_000_001
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, HTTPROUTE_V1_SCHEMA)
    route = render_route(settings, {"stable": 90, "canary": 10})
    del route["spec"]["rules"][0]["backendRefs"][1]["port"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, HTTPROUTE_V1_SCHEMA)


def test_zero_weight_backend_is_left_out_and_no_backend_is_refused() -> None:
    assert [r["name"] for r in backend_refs({"stable": 100, "canary": 0})] == ["model-stable"]
    assert [r["name"] for r in backend_refs({"stable": 0, "canary": 100})] == ["model-canary"]
    with pytest.raises(DeployError, match="nowhere"):
        backend_refs({"stable": 0, "canary": 0})


# ------------------------------------------------------------------ rendered content ----


def test_deployment_is_hardened_and_probed(settings: Settings) -> None:
    deployment = render_deployment(settings, "canary", "8", replicas=3)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["metadata"]["labels"].items() >= {"app": "driftloop-model", "variant": "canary"}.items()
    assert spec["template"]["metadata"]["labels"]["model-version"] == "8"
    assert spec["selector"]["matchLabels"] == {"app": "driftloop-model", "variant": "canary"}
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["ports"][0]["containerPort"] == 3000
    assert container["resources"]["requests"] == {"cpu": "1000m", "memory": "1536Mi"}  # 2 workers
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts["/tmp"] in {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert mounts[env["BENTOML_HOME"]] in {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "3000"
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert container["image"] == settings.serving.image


def test_container_is_configured_by_driftloop_env(settings: Settings) -> None:
    (container,) = render_deployment(settings, "canary", "8")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DRIFTLOOP_SERVING__MODEL_REF"] == "8"
    assert env["DRIFTLOOP_SERVING__VARIANT"] == "canary"
    assert env["DRIFTLOOP_PROFILE"] == "kubernetes"
    assert env["DRIFTLOOP_LAKE_ROOT"] == "s3a://acme-driftloop-lake/prod"
    assert env["DRIFTLOOP_MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc:5000"
    assert env["DRIFTLOOP_SERVING__HOST"] == "0.0.0.0"
    assert env["DRIFTLOOP_SERVING__WORKERS"] == "2"
    # every name is unique (a duplicate env var is silently last-wins in Kubernetes)
    assert len(env) == len(container["env"])


def test_secrets_only_by_reference(settings: Settings) -> None:
    rendered = yaml.safe_dump_all(_all_objects(settings))
    assert TOKEN not in rendered
    (container,) = render_deployment(settings, "stable", "7")["spec"]["template"]["spec"]["containers"]
    by_ref = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert by_ref["DRIFTLOOP_SERVING__AUTH_TOKEN"] == {"name": "driftloop-serving", "key": "auth-token"}
    assert set(by_ref) == {"DRIFTLOOP_SERVING__AUTH_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    literal = [e["name"] for e in container["env"] if "value" in e]
    assert not [n for n in literal if any(w in n for w in ("TOKEN", "SECRET", "PASSWORD", "KEY"))]
    # with workload identity (IRSA) the S3 keys are not wired at all
    irsa = _settings(workload_identity=True)
    (container,) = render_deployment(irsa, "stable", "7")["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in container["env"] if "valueFrom" in e} == {"DRIFTLOOP_SERVING__AUTH_TOKEN"}


def test_workload_identity_as_terraform_passes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environments set these when the serving service account carries an IRSA annotation."""
    monkeypatch.setenv("DRIFTLOOP_SERVING__SERVICE_ACCOUNT", "bento-irsa")
    monkeypatch.setenv("DRIFTLOOP_SERVING__WORKLOAD_IDENTITY", "true")
    serving = Settings().serving
    assert serving.service_account == "bento-irsa"
    assert serving.workload_identity is True
    settings = _settings(service_account="bento-irsa", workload_identity=True)
    pod = render_deployment(settings, "canary", "8")
    spec = pod["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "bento-irsa"
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert "AWS_ACCESS_KEY_ID" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "DRIFTLOOP_SERVING__AUTH_TOKEN" in env


def test_route_names_the_gateway_namespace_only_when_it_is_elsewhere() -> None:
    # Terraform's Gateway: same namespace as the route, so no namespace in the parentRef
    same = render_route(_settings(gateway_namespace="driftloop-serving"), {"stable": 100})
    assert same["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "driftloop", "sectionName": "https"}
    ]
    shared = render_route(_settings(gateway="edge", gateway_namespace="gateway-system"), {"stable": 100})
    jsonschema.validate(shared, HTTPROUTE_V1_SCHEMA)
    (ref,) = shared["spec"]["parentRefs"]
    assert (ref["name"], ref["namespace"]) == ("edge", "gateway-system")


def test_route_attaches_to_the_listener_terraform_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environments pass the serving-gateway listener as DRIFTLOOP_SERVING__GATEWAY_LISTENER;
    "null" attaches to every listener of a shared Gateway that admits the route."""
    monkeypatch.setenv("DRIFTLOOP_SERVING__GATEWAY_LISTENER", "models-https")
    assert Settings().serving.gateway_listener == "models-https"
    (ref,) = render_route(_settings(gateway_listener="models-https"), {"stable": 100})["spec"]["parentRefs"]
    assert ref["sectionName"] == "models-https"
    monkeypatch.setenv("DRIFTLOOP_SERVING__GATEWAY_LISTENER", "null")
    assert Settings().serving.gateway_listener is None
    route = render_route(_settings(gateway_listener=None), {"stable": 100})
    jsonschema.validate(route, HTTPROUTE_V1_SCHEMA)
    assert "sectionName" not in route["spec"]["parentRefs"][0]
    monkeypatch.setenv("DRIFTLOOP_SERVING__GATEWAY_LISTENER", "HTTPS_1")  # not a section name
    with pytest.raises(ValueError, match="gateway_listener"):
        Settings()


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/driftloop/serving",
        "ghcr.io/driftloop/serving:latest",
        "registry.local:5000/serving",
        "ghcr.io/driftloop/serving@sha256:" + "a" * 64,
        "ghcr.io/driftloop/serving:",
    ],
)
def test_unpinned_images_are_refused(image: str) -> None:
    with pytest.raises(DeployError, match="DRIFTLOOP_SERVING__IMAGE"):
        check_image(image)
    with pytest.raises(DeployError, match="DRIFTLOOP_SERVING__IMAGE"):
        render_deployment(_settings(image=image), "stable", "7")


@pytest.mark.parametrize(
    "image", ["registry.local:5000/serving:1.2.3", "ghcr.io/driftloop/serving:0.1.0@sha256:" + "b" * 64]
)
def test_pinned_images_are_accepted(image: str) -> None:
    assert check_image(image) == image


@pytest.mark.parametrize("version", ["", "x" * 64, "v1 beta", "-7", "champion/7"])
def test_model_version_must_be_a_label_value(settings: Settings, version: str) -> None:
    with pytest.raises(DeployError, match="label value"):
        render_deployment(settings, "stable", version)


def test_pods_need_shared_mlflow_and_lake() -> None:
    local_mlflow = Settings(profile="kubernetes", lake_root="s3a://b/p", mlflow_tracking_uri="")
    with pytest.raises(DeployError, match="DRIFTLOOP_MLFLOW_TRACKING_URI"):
        render_deployment(local_mlflow, "stable", "7")
    local_lake = Settings(deploy_target="kubernetes", mlflow_tracking_uri="http://mlflow:5000")
    with pytest.raises(DeployError, match="DRIFTLOOP_LAKE_ROOT"):
        render_deployment(local_lake, "stable", "7")


def test_get_target_picks_kubernetes(settings: Settings) -> None:
    assert isinstance(get_target(settings), KubernetesTarget)


# ---------------------------------------------------------------------------- checkov ----


def test_checkov_passes_on_rendered_yaml(settings: Settings, tmp_path: Path) -> None:
    result = checkov_scan.scan(_all_objects(settings), tmp_path)
    assert result.parsing_errors == 0
    assert result.passed > 100, "checkov ran (almost) no check"
    assert not result.failures, "checkov findings:\n" + "\n".join(result.failures)
    assert result.skipped == set(CHECKOV_SKIPS), f"skips unused (or the reverse): {result.skipped}"


def test_checkov_skips_are_justified_in_place(settings: Settings) -> None:
    for obj in _all_objects(settings):
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert len(reason) >= 30, f"{obj['kind']}: {check} skipped without a reason"


# ------------------------------------------------------------------- rollout progress ----


def _deployment(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "model-canary", "namespace": NS, "generation": 2},
        "spec": {"replicas": 2},
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "done", "why"),
    [
        ({"observedGeneration": 1}, False, "waiting for the controller to observe generation 2"),
        ({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3}, False, "1 of 2 replicas updated"),
        ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3}, False, "1 old replicas pending"),
        (
            {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1},
            False,
            "1 of 2 updated replicas available",
        ),
        (
            {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2},
            True,
            "rolled out",
        ),
    ],
)
def test_rollout_progress(status: dict[str, Any], done: bool, why: str) -> None:
    finished, message = rollout_progress(_deployment(**status))
    assert finished is done
    assert message.startswith(f"model-canary: {why}")


def test_rollout_progress_deadline_exceeded() -> None:
    stuck = _deployment(
        observedGeneration=2,
        conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "timed out"}],
    )
    with pytest.raises(DeployError, match=r"progress deadline.*kubectl -n driftloop-serving describe"):
        rollout_progress(stuck)


# ------------------------------------------------------------- against the fake API ----

DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
SERVICES = f"/api/v1/namespaces/{NS}/services"
HPAS = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers"
PDBS = f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"
ROUTE = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/{ROUTE_NAME}"
FAST = WorkloadShape(poll_interval_s=0.01, rollout_timeout_s=2.0)


@pytest.fixture
def fake() -> Iterator[FakeKubeApi]:
    server = FakeKubeApi().start()
    yield server
    server.stop()


def _target(fake: FakeKubeApi, shape: WorkloadShape = FAST, **serving: Any) -> KubernetesTarget:
    configuration = Configuration()
    configuration.host = fake.url
    return KubernetesTarget(_settings(**serving), shape, api_client=ApiClient(configuration))


def _ready_deployment(variant: str, version: str, replicas: int = 2) -> dict[str, Any]:
    deployment = render_deployment(_settings(), variant, version, replicas=replicas)  # type: ignore[arg-type]
    deployment["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }
    return deployment


def _route(stable: int, canary: int) -> dict[str, Any]:
    return render_route(_settings(), {"stable": stable, "canary": canary})


def test_deploy_server_side_applies_every_object(fake: FakeKubeApi) -> None:
    _target(fake).deploy("stable", "7")

    writes = fake.writes()
    assert [(w.method, w.path) for w in writes] == [
        ("PATCH", f"{SERVICES}/model-stable"),
        ("PATCH", f"{DEPLOYMENTS}/model-stable"),
        ("PATCH", f"{HPAS}/model-stable"),
        ("PATCH", f"{PDBS}/model-stable"),
        ("PATCH", ROUTE),
    ]
    for write in writes:
        assert write.content_type == APPLY
        # the client writes Python's "True"; the API server reads any value but "0"/"false" as true
        assert write.query == {"fieldManager": [FIELD_MANAGER], "force": ["True"]}
        assert write.flag("force") is True
    expected = [*render_variant(_settings(), "stable", "7", FAST, replicas=FAST.min_replicas), _route(100, 0)]
    assert [w.body for w in writes] == expected
    # a new route sends everything to stable, the only variant there is
    assert fake.objects[ROUTE]["spec"]["rules"][0]["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "model-stable", "port": 3000, "weight": 100}
    ]


def test_deploy_waits_for_the_rollout(fake: FakeKubeApi) -> None:
    fake.rollout = RolloutPlan(reads_until_ready=4)
    _target(fake).deploy("canary", "8")
    reads = [r for r in fake.requests if r.method == "GET" and r.path == f"{DEPLOYMENTS}/model-canary"]
    assert len(reads) == 1 + 5  # the pre-apply read, then 4 in progress and the ready one
    # the route is applied only once the Deployment is rolled out, keeping the canary out
    assert fake.requests[-1].path == ROUTE
    assert route_weights(fake.objects[ROUTE]) == {"stable": 100, "canary": 0}


def test_deploy_times_out_with_a_clear_error(fake: FakeKubeApi) -> None:
    fake.rollout = RolloutPlan(reads_until_ready=None)
    shape = WorkloadShape(poll_interval_s=0.02, rollout_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(DeployError, match=r"not rolled out after 0s.*1 of 2 replicas updated.*kubectl"):
        _target(fake, shape).deploy("canary", "8")
    assert 0.3 <= time.monotonic() - started < 3
    assert ROUTE not in fake.objects  # no route pointing at a variant that never came up


def test_deploy_stops_at_progress_deadline(fake: FakeKubeApi) -> None:
    fake.rollout = RolloutPlan(deadline_exceeded=True)
    with pytest.raises(DeployError, match="progress deadline"):
        _target(fake, WorkloadShape(poll_interval_s=0.01, rollout_timeout_s=30)).deploy("canary", "8")


def test_redeploy_keeps_the_autoscalers_replicas_and_the_routes_weights(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7", replicas=5))
    fake.put(f"{DEPLOYMENTS}/model-canary", _ready_deployment("canary", "8"))
    fake.put(ROUTE, _route(50, 50))
    _target(fake).deploy("stable", "9")
    applied = next(w for w in fake.writes() if w.path == f"{DEPLOYMENTS}/model-stable")
    assert applied.body["spec"]["replicas"] == 5
    assert applied.body["spec"]["template"]["metadata"]["labels"]["model-version"] == "9"
    assert fake.objects[f"{DEPLOYMENTS}/model-stable"]["metadata"]["generation"] == 2
    assert route_weights(fake.requests[-1].body) == {"stable": 50, "canary": 50}


def test_set_canary_weight_merge_patches_only_the_route(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7"))
    fake.put(f"{DEPLOYMENTS}/model-canary", _ready_deployment("canary", "8"))
    fake.put(ROUTE, _route(100, 0))
    version = fake.objects[ROUTE]["metadata"]["resourceVersion"]

    _target(fake).set_canary_weight(10)

    (write,) = fake.writes()
    assert (write.method, write.path, write.content_type) == ("PATCH", ROUTE, MERGE)
    assert write.query == {"fieldManager": [FIELD_MANAGER]}  # force is for apply patches only
    assert write.body == {
        "metadata": {"resourceVersion": version},
        "spec": {"rules": _route(90, 10)["spec"]["rules"]},
    }
    assert route_weights(fake.objects[ROUTE]) == {"stable": 90, "canary": 10}
    assert fake.objects[ROUTE]["spec"]["hostnames"] == [_settings().serving.hostname]  # untouched


def test_set_canary_weight_keeps_what_others_added_to_the_rule(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7"))
    fake.put(f"{DEPLOYMENTS}/model-canary", _ready_deployment("canary", "8"))
    route = _route(100, 0)
    route["spec"]["rules"][0]["timeouts"] = {"request": "10s"}
    fake.put(ROUTE, route)
    _target(fake).set_canary_weight(100)
    rule = fake.objects[ROUTE]["spec"]["rules"][0]
    assert rule["timeouts"] == {"request": "10s"}
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [("model-canary", 100)]


def test_set_canary_weight_retries_a_conflicting_write(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7"))
    fake.put(f"{DEPLOYMENTS}/model-canary", _ready_deployment("canary", "8"))
    fake.put(ROUTE, _route(90, 10))
    fake.merge_conflicts = 1
    _target(fake).set_canary_weight(50)
    patches = [w for w in fake.writes() if w.path == ROUTE]
    assert len(patches) == 2
    assert patches[0].body["metadata"]["resourceVersion"] != patches[1].body["metadata"]["resourceVersion"]
    assert route_weights(fake.objects[ROUTE]) == {"stable": 50, "canary": 50}


def test_set_canary_weight_gives_up_after_repeated_conflicts(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7"))
    fake.put(f"{DEPLOYMENTS}/model-canary", _ready_deployment("canary", "8"))
    fake.put(ROUTE, _route(90, 10))
    fake.merge_conflicts = 5
    with pytest.raises(DeployError, match="HTTP 409"):
        _target(fake).set_canary_weight(50)


def test_set_canary_weight_refuses_a_canary_that_is_not_ready(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7"))
    fake.put(ROUTE, _route(100, 0))
    with pytest.raises(DeployError, match=r"canary variant.*missing"):
        _target(fake).set_canary_weight(10)
    unready = _ready_deployment("canary", "8")
    unready["status"]["availableReplicas"] = 0
    fake.put(f"{DEPLOYMENTS}/model-canary", unready)
    with pytest.raises(DeployError, match=r"canary variant.*not ready"):
        _target(fake).set_canary_weight(10)
    # rolling back to stable needs no ready canary
    _target(fake).set_canary_weight(0)
    assert not [w for w in fake.writes() if w.path != ROUTE]


@pytest.mark.parametrize("percent", [-1, 101, 10.5, True])
def test_set_canary_weight_validates_the_percentage(fake: FakeKubeApi, percent: Any) -> None:
    with pytest.raises(DeployError, match=r"\[0, 100\]"):
        _target(fake).set_canary_weight(percent)
    assert fake.requests == []


def test_strategic_merge_would_be_refused_for_the_crd(fake: FakeKubeApi) -> None:
    """Why the target names its patch type: the client's default for a dict body on the typed
    APIs is strategic merge, which a CRD refuses with 415."""
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    fake.put(ROUTE, _route(100, 0))
    api = CustomObjectsApi(_target(fake).api_client)
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(
            "gateway.networking.k8s.io",
            "v1",
            NS,
            "httproutes",
            ROUTE_NAME,
            {"spec": {}},
            _content_type="application/json-patch+json",
        )
    assert caught.value.status == 415
    assert fake.requests[-1].content_type == "application/strategic-merge-patch+json"


def test_remove_refuses_while_the_variant_takes_traffic(fake: FakeKubeApi) -> None:
    fake.put(ROUTE, _route(90, 10))
    with pytest.raises(DeployError, match="10% of traffic"):
        _target(fake).remove("canary")
    assert fake.writes() == []


def test_remove_deletes_the_variants_objects(fake: FakeKubeApi) -> None:
    fake.put(ROUTE, _route(100, 0))
    for path in (DEPLOYMENTS, SERVICES, HPAS, PDBS):
        fake.put(f"{path}/model-canary", {"kind": "X", "metadata": {"name": "model-canary"}})
    _target(fake).remove("canary")
    deletes = fake.writes()
    assert [(d.method, d.path) for d in deletes] == [
        ("DELETE", f"{HPAS}/model-canary"),
        ("DELETE", f"{DEPLOYMENTS}/model-canary"),
        ("DELETE", f"{PDBS}/model-canary"),
        ("DELETE", f"{SERVICES}/model-canary"),
    ]
    assert all(d.query == {"propagationPolicy": ["Background"]} for d in deletes)
    assert list(fake.objects) == [ROUTE]
    fake.clear()
    _target(fake).remove("canary")  # nothing left: a no-op, not an error
    assert len(fake.writes()) == 4


def test_status_reads_weights_versions_and_readiness(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7"))
    unready = _ready_deployment("canary", "8")
    unready["status"]["availableReplicas"] = 0
    fake.put(f"{DEPLOYMENTS}/model-canary", unready)
    fake.put(ROUTE, _route(90, 10))

    status = _target(fake).status()

    assert status.endpoint == "https://models.driftloop.internal"
    assert status.canary_weight == 10
    stable, canary = status.variants["stable"], status.variants["canary"]
    assert (stable.model_version, stable.weight, stable.ready) == ("7", 90, True)
    assert (canary.model_version, canary.weight, canary.ready) == ("8", 10, False)
    assert stable.endpoint == f"http://model-stable.{NS}.svc:3000"
    assert fake.writes() == []


def test_status_of_an_empty_namespace(fake: FakeKubeApi) -> None:
    status = _target(fake).status()
    assert status.canary_weight == 0
    assert all(v.model_version is None and not v.ready and v.weight == 0 for v in status.variants.values())


def test_unreachable_api_server_is_a_deploy_error() -> None:
    configuration = Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    configuration.retries = 0
    target = KubernetesTarget(_settings(), FAST, api_client=ApiClient(configuration))
    with pytest.raises(DeployError, match=r"Kubernetes API at http://127\.0\.0\.1:9 unreachable"):
        target.status()


def test_missing_rights_are_explained(fake: FakeKubeApi) -> None:
    fake.deny = {"horizontalpodautoscalers"}
    with pytest.raises(DeployError, match=r"applying HorizontalPodAutoscaler model-canary.*HTTP 403.*Role"):
        _target(fake).deploy("canary", "8")


def test_typed_reads_see_what_was_applied(fake: FakeKubeApi) -> None:
    target = _target(fake)
    target.deploy("stable", "7")
    deployment = AppsV1Api(target.api_client).read_namespaced_deployment("model-stable", NS)
    assert deployment.metadata.labels["model-version"] == "7"
    assert deployment.spec.template.spec.containers[0].security_context.read_only_root_filesystem is True


def test_deploy_is_idempotent(fake: FakeKubeApi) -> None:
    target = _target(fake)
    target.deploy("stable", "7")
    first = [w.body for w in fake.writes()]
    fake.clear()
    target.deploy("stable", "7")
    assert [w.body for w in fake.writes()] == first
    reads = [r for r in fake.requests if r.method == "GET" and r.path == f"{DEPLOYMENTS}/model-stable"]
    assert len(reads) == 2  # before the apply, and one look that finds it rolled out
    assert fake.objects[f"{DEPLOYMENTS}/model-stable"]["metadata"]["generation"] == 1


@pytest.mark.parametrize("variant", ["blue", "", "Stable"])
def test_unknown_variants_are_refused(fake: FakeKubeApi, variant: Any) -> None:
    target = _target(fake)
    with pytest.raises(DeployError, match="unknown variant"):
        target.deploy(variant, "7")
    with pytest.raises(DeployError, match="unknown variant"):
        target.remove(variant)
    assert fake.requests == []


def test_weight_zero_without_a_route_is_a_no_op(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-stable", _ready_deployment("stable", "7"))
    _target(fake).set_canary_weight(0)
    assert fake.writes() == []


def test_a_promotion_as_the_rollout_drives_it(fake: FakeKubeApi) -> None:
    """The call sequence of driftloop.rollout: first champion, canary ladder, promotion."""
    target = _target(fake)
    target.deploy("stable", "7")  # resolve_release: the first champion
    target.set_canary_weight(0)  # start(): no traffic to a canary being replaced
    target.deploy("canary", "8")
    for weight in (10, 50, 100):
        target.set_canary_weight(weight)
        assert target.status().canary_weight == weight
    target.set_canary_weight(100)  # promote(): new stable while the canary serves everything
    target.deploy("stable", "8")
    target.set_canary_weight(0)
    target.remove("canary")

    status = target.status()
    assert (status.variants["stable"].model_version, status.variants["stable"].weight) == ("8", 100)
    assert status.variants["stable"].ready
    assert (status.variants["canary"].model_version, status.variants["canary"].weight) == (None, 0)
    assert route_weights(fake.objects[ROUTE]) == {"stable": 100, "canary": 0}
    # never did the route name a Service that was not there
    assert fake.dangling_backends == []
    # the canary Deployment never changed version mid-flight; stable rolled once, to 8
    stable = fake.objects[f"{DEPLOYMENTS}/model-stable"]
    assert stable["metadata"]["generation"] == 2
    assert f"{DEPLOYMENTS}/model-canary" not in fake.objects


def test_a_rollback_as_the_rollout_drives_it(fake: FakeKubeApi) -> None:
    target = _target(fake)
    target.deploy("stable", "7")
    target.deploy("canary", "8")
    target.set_canary_weight(10)
    target.set_canary_weight(0)  # roll_back()
    target.remove("canary")
    target.remove("canary")  # a retried task: still fine
    status = target.status()
    assert (status.variants["stable"].model_version, status.canary_weight) == ("7", 0)
    assert fake.dangling_backends == []


# --------------------------------------------------------------------------- metrics ----


def _vector(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1_700_000_000.0, str(value)]}


def test_metrics_sum_the_variants_series_from_prometheus(fake: FakeKubeApi) -> None:
    fake.put(f"{DEPLOYMENTS}/model-canary", _ready_deployment("canary", "8"))
    sel = f'namespace="{NS}",variant="canary",model_version="8"'
    fake.prometheus = {
        f"sum(driftloop_requests_total{{{sel}}})": [_vector(120)],
        f'sum(driftloop_requests_total{{{sel},status=~"5.."}})': [_vector(3)],
        f"sum(driftloop_predictions_total{{{sel}}})": [_vector(450)],
        f"sum by (le) (driftloop_request_latency_seconds_bucket{{{sel}}})": [
            _vector(100, le="0.01"),
            _vector(120, le="+Inf"),
        ],
        f"sum by (le) (driftloop_score_bucket{{{sel}}})": [_vector(400, le="0.5"), _vector(450, le="+Inf")],
    }
    target = _target(fake, prometheus_url=fake.url)

    snapshot = target.metrics("canary")

    assert snapshot == MetricsSnapshot(
        variant="canary",
        model_version="8",
        requests=120.0,
        errors=3.0,
        predictions=450.0,
        latency_buckets={0.01: 100.0, float("inf"): 120.0},
        score_buckets={0.5: 400.0, float("inf"): 450.0},
    )
    queries = [r for r in fake.requests if r.path == "/api/v1/query"]
    assert [r.method for r in queries] == ["GET"] * 5


def test_metrics_without_series_are_zero(fake: FakeKubeApi) -> None:
    snapshot = _target(fake, prometheus_url=fake.url).metrics("stable")
    assert (snapshot.model_version, snapshot.requests, snapshot.latency_buckets) == (None, 0.0, {})


def test_metrics_need_a_prometheus_url(fake: FakeKubeApi) -> None:
    with pytest.raises(DeployError, match="DRIFTLOOP_SERVING__PROMETHEUS_URL"):
        _target(fake).metrics("stable")


def test_unreachable_prometheus_is_a_deploy_error(fake: FakeKubeApi) -> None:
    target = _target(fake, prometheus_url="http://127.0.0.1:9")
    with pytest.raises(DeployError, match=r"Prometheus query .* failed.*DRIFTLOOP_SERVING__PROMETHEUS_URL"):
        target.metrics("canary")
