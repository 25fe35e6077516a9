"""The ``kubernetes`` deploy target: per variant a Deployment, Service, HPA and PodDisruptionBudget,
and one Gateway API HTTPRoute that splits traffic by weight between the two Services.

Objects are plain dicts rendered by typed functions (no templating) and applied with server-side
apply under the field manager ``driftloop``; weights move by a merge patch of the HTTPRoute only;
metrics come from the Prometheus HTTP API.

The HTTPRoute is this module's alone: Terraform creates the Gateway it attaches to but not the
route (terraform/modules/serving-gateway says why), so nothing else writes its weights.

What the tests here cannot show (no cluster exists on this machine): that the CRD's CEL rules
(which a JSON schema cannot express) accept the route, that a Gateway implementation really
splits traffic by these weights, that the image starts under the read-only, non-root security
context, that the HPA's CPU metric exists (metrics-server), and that the Prometheus in the
cluster scrapes the pods with a ``namespace`` label. tests/infra/test_rbac.py checks that the
serving Role (terraform ``airflow-rollout``) grants exactly the verbs the calls here need. The
fake API server in the tests models the wire protocol (paths, patch types, query flags, the
resourceVersion precondition of a merge patch, 404/409/403/415), not server-side apply's field
merging or admission.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from driftloop.deploy.base import (
    LATENCY_SECONDS,
    PREDICTIONS_TOTAL,
    REQUESTS_TOTAL,
    SCORE,
    VARIANTS,
    DeployError,
    DeployTarget,
    MetricsSnapshot,
    TargetStatus,
    Variant,
    VariantStatus,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from driftloop.config import Settings

FIELD_MANAGER = "driftloop"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"

APP = "driftloop-model"
# The route is created here on the first deploy (terraform/modules/serving-gateway creates only
# its Gateway); the README's kubectl checks name it.
ROUTE_NAME = "driftloop-model"
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
HTTPROUTES = "httproutes"
SERVING_PORT = 3000  # the BentoML service's port (serving/service.py)
BENTOML_HOME = "/home/bentoml/home"
# Terraform's default Gateway listener terminates TLS; clients reach the route over HTTPS.
ROUTE_SCHEME = "https"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class _WriteConflict(DeployError):
    """HTTP 409: another writer changed the object since it was read."""


def object_name(variant: Variant) -> str:
    """Name of the variant's Deployment, Service, HPA and PDB."""
    return f"model-{variant}"


@dataclass(frozen=True)
class WorkloadShape:
    """Sizing and runtime knobs of the serving pods; one shape for both variants."""

    min_replicas: int = 2
    """Floor of the HPA and the replica count of a new Deployment (2: a node drain keeps one)."""
    max_replicas: int = 6
    """Ceiling of the HPA."""
    cpu_millis_per_worker: int = 500
    """CPU request per BentoML worker process; the limit is twice the request."""
    memory_mib_per_worker: int = 768
    """Memory request and limit per worker (equal: memory cannot be throttled, only killed)."""
    target_cpu_percent: int = 70
    """Average CPU utilisation (of the request) the HPA aims for."""
    secret_name: str = "driftloop-serving"
    """Secret holding ``auth-token`` and the S3 keys (unless DRIFTLOOP_SERVING__WORKLOAD_IDENTITY
    is true); created outside driftloop, never rendered."""
    run_as_user: int = 10001
    """Non-root UID (and GID) of the container; above 10000 so it maps to no host account."""
    progress_deadline_s: int = 300
    """Kubernetes marks the rollout failed (ProgressDeadlineExceeded) after this long."""
    rollout_timeout_s: float = 600.0
    """deploy() gives up waiting for the rollout after this long."""
    poll_interval_s: float = 2.0
    """How often deploy() reads the Deployment while waiting."""
    startup_grace_s: int = 300
    """Longest a pod may take to load its model before liveness checks start."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {self}")


# ----------------------------------------------------------------------------- rendering ----


def check_image(image: str, setting: str = "DRIFTLOOP_SERVING__IMAGE") -> str:
    """The image if pinned by a tag other than ``latest`` (a digest may follow); else DeployError.

    ``setting`` is the variable the message tells the user to fix.
    """
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if not tag:
        raise DeployError(f"image {image!r} has no tag: pin one, e.g. {setting}={name}:0.1.0")
    if tag == "latest" or not _TAG.match(tag):
        raise DeployError(
            f"image {image!r} must be pinned by an immutable tag, not {tag!r}: "
            f"set {setting} to a released tag"
        )
    return image


def check_label_value(value: str, what: str) -> str:
    """``value`` if it can be a Kubernetes label value (model versions are labels here)."""
    if len(value) > 63 or not _LABEL_VALUE.match(value) or not value:
        raise DeployError(
            f"{what} {value!r} cannot be a Kubernetes label value "
            "(1-63 characters: letters, digits, '-', '_', '.', alphanumeric at both ends)"
        )
    return value


def selector_labels(variant: Variant) -> dict[str, str]:
    """Labels that pick a variant's pods; immutable in a Deployment, so no version here."""
    return {"app": APP, "variant": variant}


def _labels(variant: Variant, model_version: str | None = None) -> dict[str, str]:
    labels = {
        **selector_labels(variant),
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/part-of": "driftloop",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
    }
    if model_version is not None:
        labels["model-version"] = model_version
    return labels


def _metadata(settings: Settings, name: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": settings.serving.namespace, "labels": labels, **extra}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def container_env(
    settings: Settings, variant: Variant, model_version: str, shape: WorkloadShape
) -> list[dict[str, Any]]:
    """The serving container's environment: DRIFTLOOP_* settings, secrets only by reference."""
    if not settings.mlflow_tracking_uri:
        raise DeployError(
            "serving pods need a reachable MLflow server: set DRIFTLOOP_MLFLOW_TRACKING_URI "
            "(the default SQLite store exists only on this machine)"
        )
    if not settings.lake_uri.startswith("s3a://"):
        raise DeployError(
            f"serving pods log predictions to the lake, but {settings.lake_uri!r} is a local folder: "
            "set DRIFTLOOP_LAKE_ROOT=s3a://<bucket>/<prefix>"
        )
    serving = settings.serving
    plain = {
        "DRIFTLOOP_PROFILE": "kubernetes",
        "DRIFTLOOP_LAKE_ROOT": settings.lake_uri,
        "DRIFTLOOP_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "DRIFTLOOP_REGISTERED_MODEL": settings.registered_model,
        "DRIFTLOOP_SERVING__MODEL_REF": model_version,
        "DRIFTLOOP_SERVING__VARIANT": variant,
        # the kubelet's probes and the Service reach the pod on its own IP, not on loopback
        "DRIFTLOOP_SERVING__HOST": "0.0.0.0",
        "DRIFTLOOP_SERVING__WORKERS": str(serving.workers),
        "DRIFTLOOP_SERVING__DECISION_THRESHOLD": str(serving.decision_threshold),
        "DRIFTLOOP_SERVING__MAX_BATCH_ROWS": str(serving.max_batch_rows),
        "DRIFTLOOP_SERVING__MAX_BODY_BYTES": str(serving.max_body_bytes),
        "DRIFTLOOP_SERVING__LOG_FLUSH_ROWS": str(serving.log_flush_rows),
        "DRIFTLOOP_SERVING__LOG_FLUSH_SECONDS": str(serving.log_flush_seconds),
        "DRIFTLOOP_SERVING__LOG_BUFFER_LIMIT": str(serving.log_buffer_limit),
        "BENTOML_HOME": BENTOML_HOME,
    }
    if settings.s3_endpoint_url:
        plain["DRIFTLOOP_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    # Exposed through the Gateway: the bearer token is mandatory here, whatever the local default.
    env.append(_secret_env("DRIFTLOOP_SERVING__AUTH_TOKEN", shape.secret_name, "auth-token"))
    # with a workload identity (IRSA) the AWS SDK finds the service account's role by itself
    if not serving.workload_identity:
        env.append(_secret_env("AWS_ACCESS_KEY_ID", shape.secret_name, "aws-access-key-id"))
        env.append(_secret_env("AWS_SECRET_ACCESS_KEY", shape.secret_name, "aws-secret-access-key"))
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


# checkov skips, justified where checkov reads them (the object's annotations)
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images are pinned by tag (check_image refuses latest/untagged); "
    "a digest may be appended to DRIFTLOOP_SERVING__IMAGE but is not required",
    "CKV_K8S_35": "the service is configured by DRIFTLOOP_* env vars (pydantic-settings); "
    "secrets come from secretKeyRef, never literal values",
    "CKV2_K8S_6": "NetworkPolicies for the serving namespace are owned by "
    "terraform/modules/k8s-namespaces (default deny, ingress from gateway and airflow only)",
}


def _checkov_annotations(*ids: str) -> dict[str, str]:
    return {f"checkov.io/skip{i}": f"{check}={CHECKOV_SKIPS[check]}" for i, check in enumerate(ids, 1)}


def render_deployment(
    settings: Settings,
    variant: Variant,
    model_version: str,
    shape: WorkloadShape = WorkloadShape(),
    replicas: int | None = None,
) -> dict[str, Any]:
    """The variant's Deployment: hardened pod, probes, zero-unavailable rolling update."""
    check_label_value(model_version, "model version")
    image = check_image(settings.serving.image)
    workers = settings.serving.workers
    cpu, memory = shape.cpu_millis_per_worker * workers, shape.memory_mib_per_worker * workers
    pod_labels = _labels(variant, model_version)
    period = 5
    pod = {
        # terraform/modules/k8s-namespaces creates it, with the workload-identity annotations. No
        # API token: IRSA's webhook projects its own web-identity token, independent of this flag.
        "serviceAccountName": settings.serving.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": shape.run_as_user,
            "runAsGroup": shape.run_as_user,
            "fsGroup": shape.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # BentoML drains in-flight requests on SIGTERM; leave time for it and for endpoint removal
        "terminationGracePeriodSeconds": 60,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(variant)},
                # spread the pods of the current ReplicaSet, not old and new together mid-rollout
                "matchLabelKeys": ["pod-template-hash"],
            }
            for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
        ],
        "containers": [
            {
                "name": "bento",
                "image": image,
                "imagePullPolicy": "Always",
                "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
                "env": container_env(settings, variant, model_version, shape),
                "resources": {
                    "requests": {"cpu": f"{cpu}m", "memory": f"{memory}Mi"},
                    "limits": {"cpu": f"{2 * cpu}m", "memory": f"{memory}Mi"},
                },
                # startup covers model loading; liveness only restarts a wedged process; readiness
                # gates traffic (and the rollout) on the model being loaded
                "startupProbe": _probe("/livez", period, math.ceil(shape.startup_grace_s / period)),
                "livenessProbe": _probe("/livez", 10, 3),
                "readinessProbe": _probe("/readyz", period, 2),
                "securityContext": {
                    "runAsNonRoot": True,
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    # BentoML keeps its Prometheus multiprocess files and runtime state here
                    {"name": "bentoml-home", "mountPath": BENTOML_HOME},
                ],
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
            {"name": "bentoml-home", "emptyDir": {"sizeLimit": "512Mi"}},
        ],
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(variant)},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": shape.progress_deadline_s,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(SERVING_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod,
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            settings,
            object_name(variant),
            pod_labels,
            annotations=_checkov_annotations("CKV_K8S_43", "CKV_K8S_35", "CKV2_K8S_6"),
        ),
        "spec": spec,
    }


def render_service(settings: Settings, variant: Variant) -> dict[str, Any]:
    """ClusterIP Service in front of the variant's pods (the HTTPRoute's backend)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(settings, object_name(variant), _labels(variant)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(variant),
            "ports": [
                {
                    "name": "http",
                    "port": SERVING_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def render_hpa(
    settings: Settings,
    variant: Variant,
    shape: WorkloadShape = WorkloadShape(),
) -> dict[str, Any]:
    """CPU-based autoscaler of the variant's Deployment (autoscaling/v2)."""
    name = object_name(variant)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(settings, name, _labels(variant)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": shape.min_replicas,
            "maxReplicas": shape.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": shape.target_cpu_percent},
                    },
                }
            ],
            # a canary step moves traffic in one jump: scale up at once, scale down slowly
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 300},
            },
        },
    }


def render_pdb(settings: Settings, variant: Variant) -> dict[str, Any]:
    """At most one of the variant's pods voluntarily disrupted at a time (drains, upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(settings, object_name(variant), _labels(variant)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(variant)},
            # a pod that never became ready must not block a node drain
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def backend_refs(weights: Mapping[str, int]) -> list[dict[str, Any]]:
    """Weighted backendRefs; a variant at weight 0 is left out.

    Dropping rather than keeping it at 0: remove() deletes the canary Service, and a backendRef
    naming a missing Service turns the route's ResolvedRefs condition False (BackendNotFound)
    for as long as no canary runs. A route listing only what takes traffic is also what
    status() reads back without ambiguity. Both out (0/0) is refused: nothing would serve.
    """
    refs = [
        {"group": "", "kind": "Service", "name": object_name(v), "port": SERVING_PORT, "weight": w}
        for v in VARIANTS
        if (w := int(weights.get(v, 0))) > 0
    ]
    if not refs:
        raise DeployError(f"weights {dict(weights)} send traffic nowhere")
    return refs


def gateway_ref(settings: Settings) -> dict[str, str]:
    """The route's parentRef: the Gateway by name and listener, by namespace only when elsewhere.

    For the defaults and what the Terraform environments pass, this selects exactly the listener
    terraform/modules/serving-gateway creates (sectionName = its listener.name; no namespace in
    the serving namespace, where that listener admits routes from). group and kind are written
    out although the CRD defaults them, so the live route (parentRefs is an atomic list) holds
    exactly what was sent.
    """
    serving = settings.serving
    ref = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": serving.gateway}
    if serving.gateway_namespace and serving.gateway_namespace != serving.namespace:
        ref["namespace"] = serving.gateway_namespace
    if serving.gateway_listener:
        ref["sectionName"] = serving.gateway_listener
    return ref


def render_route(settings: Settings, weights: Mapping[str, int]) -> dict[str, Any]:
    """The HTTPRoute on the Gateway that splits traffic between the variants' Services."""
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
        "kind": "HTTPRoute",
        "metadata": _metadata(
            settings,
            ROUTE_NAME,
            {
                "app": APP,
                "app.kubernetes.io/part-of": "driftloop",
                "app.kubernetes.io/managed-by": FIELD_MANAGER,
            },
        ),
        "spec": {
            "parentRefs": [gateway_ref(settings)],
            "hostnames": [settings.serving.hostname],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": backend_refs(weights),
                }
            ],
        },
    }


def render_variant(
    settings: Settings,
    variant: Variant,
    model_version: str,
    shape: WorkloadShape = WorkloadShape(),
    replicas: int | None = None,
) -> list[dict[str, Any]]:
    """Everything one variant runs on, in apply order (Service, Deployment, HPA, PDB)."""
    return [
        render_service(settings, variant),
        render_deployment(settings, variant, model_version, shape, replicas),
        render_hpa(settings, variant, shape),
        render_pdb(settings, variant),
    ]


def _is_ours(ref: Mapping[str, Any]) -> bool:
    return ref.get("kind", "Service") == "Service" and ref.get("name") in {object_name(v) for v in VARIANTS}


def route_weights(route: Mapping[str, Any] | None) -> dict[Variant, int]:
    """Weights of the variants in a route (absent backendRef: 0; backendRef without weight: 1)."""
    weights: dict[Variant, int] = dict.fromkeys(VARIANTS, 0)
    if not route:
        return weights
    for rule in route.get("spec", {}).get("rules", []):
        refs = [r for r in rule.get("backendRefs", []) if _is_ours(r)]
        if refs:
            for ref in refs:
                weights[ref["name"].removeprefix("model-")] = int(ref.get("weight", 1))
            break
    return weights


# ------------------------------------------------------------------------ rollout state ----


def rollout_progress(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a Deployment's latest generation is fully rolled out, and if not, why.

    The checks of ``kubectl rollout status``; raises DeployError when Kubernetes itself gave up
    (ProgressDeadlineExceeded).
    """
    meta, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status") or {}
    name = meta.get("name")
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return False, f"{name}: waiting for the controller to observe generation {meta.get('generation')}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            raise DeployError(
                f"deployment {name} exceeded its progress deadline: {condition.get('message')}; "
                f"check `kubectl -n {meta.get('namespace')} describe deployment {name}` and the new "
                "pods' events (image pull, probes on /readyz, model loading, the Secret's keys)"
            )
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < wanted:
        return False, f"{name}: {updated} of {wanted} replicas updated"
    if status.get("replicas", 0) > updated:
        return False, f"{name}: {status.get('replicas', 0) - updated} old replicas pending termination"
    available = status.get("availableReplicas", 0)
    if available < updated:
        return False, f"{name}: {available} of {updated} updated replicas available"
    return True, f"{name}: rolled out"


def _is_ready(deployment: Mapping[str, Any] | None) -> bool:
    """Serving: the current generation observed, no rollout half-done, at least one pod available."""
    if not deployment:
        return False
    meta, status = deployment["metadata"], deployment.get("status") or {}
    return (
        status.get("observedGeneration", 0) >= meta.get("generation", 0)
        and status.get("updatedReplicas", 0) >= status.get("replicas", 0)
        and status.get("availableReplicas", 0) >= 1
    )


# ---------------------------------------------------------------------------- the target ----

_API_HINTS = {
    401: "the credentials were refused",
    409: "another writer changed the object; retry",
    415: "the API server refused the patch type",
    422: "the API server rejected the object as invalid",
}


def call_api(
    api_client: ApiClient,
    what: str,
    namespace: str,
    fn: Callable[..., Any],
    *args: Any,
    error: type[Exception],
    rights: str,
    errors_by_status: Mapping[int, type[Exception]] | None = None,
    **kwargs: Any,
) -> Any:
    """Call the Kubernetes API; 404 → None; anything else → ``error`` saying what to check.

    ``rights`` names the Role that should grant the caller what it needs (the 403 hint);
    ``errors_by_status`` raises a more specific error for some statuses (409 for a retry).
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        hint = {
            **_API_HINTS,
            403: f"the service account lacks rights in namespace {namespace} "
            f"(terraform/modules/k8s-namespaces, {rights})",
        }.get(exc.status or 0, "see the API server's message")
        raise (errors_by_status or {}).get(exc.status or 0, error)(
            f"{what} in namespace {namespace} failed: HTTP {exc.status} {exc.reason} ({hint}): "
            f"{(exc.body or '')[:500]}"
        ) from exc
    except HTTPError as exc:
        raise error(
            f"{what}: Kubernetes API at {api_client.configuration.host} unreachable ({exc}); check the "
            "kubeconfig/in-cluster configuration and network access to the API server"
        ) from exc


def load_api_client(error: type[Exception]) -> ApiClient:
    """A client for the cluster this runs in (its service account), else for the local kubeconfig.

    Raises ``error`` saying what to provide when neither exists.
    """
    from kubernetes import config
    from kubernetes.client import ApiClient

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except config.ConfigException as exc:
            raise error(
                "no Kubernetes credentials: run inside the cluster (service account) or "
                f"provide a kubeconfig (KUBECONFIG): {exc}"
            ) from exc
    return ApiClient()


class KubernetesTarget(DeployTarget):
    """Stable and canary as Deployments behind one weighted HTTPRoute, driven through the API.

    ``api_client`` defaults to in-cluster configuration (an Airflow task pod), falling back to
    the local kubeconfig; tests pass a client pointed at a fake API server.
    """

    def __init__(
        self,
        settings: Settings,
        shape: WorkloadShape | None = None,
        api_client: ApiClient | None = None,
    ) -> None:
        self.settings = settings
        self.shape = shape or WorkloadShape()
        self.namespace = settings.serving.namespace
        self._api_client = api_client

    # -- clients --

    @property
    def api_client(self) -> ApiClient:
        if self._api_client is None:
            self._api_client = load_api_client(DeployError)
        return self._api_client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the API; 404 → None; anything else → DeployError saying what to check."""
        return call_api(
            self.api_client,
            what,
            self.namespace,
            fn,
            *args,
            error=DeployError,
            rights="Role airflow-rollout",
            errors_by_status={409: _WriteConflict},
            **kwargs,
        )

    def _read(self, kind: Literal["Deployment", "HTTPRoute"], name: str) -> dict[str, Any] | None:
        """The object as the API serves it (a camelCase dict), or None when it does not exist."""
        from kubernetes import client

        if kind == "HTTPRoute":
            return self._call(
                f"reading HTTPRoute {name}",
                client.CustomObjectsApi(self.api_client).get_namespaced_custom_object,
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                self.namespace,
                HTTPROUTES,
                name,
            )
        found = self._call(
            f"reading Deployment {name}",
            client.AppsV1Api(self.api_client).read_namespaced_deployment,
            name,
            self.namespace,
        )
        return None if found is None else self.api_client.sanitize_for_serialization(found)

    def _apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of one rendered object as field manager ``driftloop``.

        ``force=True``: driftloop is the only intended writer of these fields, and the
        Kubernetes docs advise controllers to always force, since a conflict (an operator's
        ``kubectl edit``, a route an older Terraform module created) is not something a rollout
        step can resolve by retrying. What others legitimately own is kept by not sending it:
        the HPA's replica count (see deploy()), and the route's weights are re-sent unchanged.
        """
        from kubernetes import client

        kind, name = obj["kind"], obj["metadata"]["name"]
        options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        if kind == "HTTPRoute":
            return self._call(
                f"applying HTTPRoute {name} (are the Gateway API CRDs installed?)",
                client.CustomObjectsApi(self.api_client).patch_namespaced_custom_object,
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                self.namespace,
                HTTPROUTES,
                name,
                obj,
                **options,
            )
        patch = {
            "Deployment": client.AppsV1Api(self.api_client).patch_namespaced_deployment,
            "Service": client.CoreV1Api(self.api_client).patch_namespaced_service,
            "HorizontalPodAutoscaler": client.AutoscalingV2Api(
                self.api_client
            ).patch_namespaced_horizontal_pod_autoscaler,
            "PodDisruptionBudget": client.PolicyV1Api(self.api_client).patch_namespaced_pod_disruption_budget,
        }[kind]
        applied = self._call(f"applying {kind} {name}", patch, name, self.namespace, obj, **options)
        if applied is None:
            raise DeployError(
                f"applying {kind} {name}: the API server answered 404 (is the namespace there?)"
            )
        return self.api_client.sanitize_for_serialization(applied)

    # -- the interface --

    def deploy(self, variant: Variant, model_version: str) -> None:
        if variant not in VARIANTS:
            raise DeployError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        model_version = check_label_value(str(model_version), "model version")
        name = object_name(variant)
        current = self._read("Deployment", name)
        # Once the Deployment exists the HPA decides the replica count: re-send what it chose, so
        # the apply changes nothing there (leaving the field out would let SSA reset it to the
        # default of 1 whenever driftloop is still its only owner).
        replicas = self.shape.min_replicas
        if current is not None:
            replicas = min(
                max(current.get("spec", {}).get("replicas", replicas), self.shape.min_replicas),
                self.shape.max_replicas,
            )
        objects = render_variant(self.settings, variant, model_version, self.shape, replicas)
        applied: dict[str, Any] = {}
        for obj in objects:
            result = self._apply(obj)
            if obj["kind"] == "Deployment":
                applied = result
        self._wait_for_rollout(name, applied.get("metadata", {}).get("generation", 0))
        self._ensure_route()

    def _wait_for_rollout(self, name: str, generation: int) -> None:
        deadline = time.monotonic() + self.shape.rollout_timeout_s
        message = f"{name}: not read yet"
        while True:
            deployment = self._read("Deployment", name)
            if deployment is None:
                raise DeployError(f"deployment {name} vanished while rolling out (deleted by someone?)")
            # a read answered by a lagging cache may predate our apply
            if deployment["metadata"].get("generation", 0) >= generation:
                done, message = rollout_progress(deployment)
                if done:
                    return
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"deployment {name} not rolled out after {self.shape.rollout_timeout_s:.0f}s "
                    f"({message}); check `kubectl -n {self.namespace} get pods -l app={APP}` and the "
                    "pods' events: image pull, /readyz failing (model not loadable from MLflow?), "
                    f"missing keys in Secret {self.shape.secret_name}, resource quota"
                )
            time.sleep(self.shape.poll_interval_s)

    def _ensure_route(self) -> None:
        """Create the HTTPRoute (all traffic to stable) or re-apply it keeping its weights."""
        route = self._read("HTTPRoute", ROUTE_NAME)
        weights = route_weights(route) if route else {"stable": 100, "canary": 0}
        if not any(weights.values()):
            weights = {"stable": 100, "canary": 0}
        self._apply(render_route(self.settings, weights))

    def _require_serving(self, variant: Variant, ready: bool) -> None:
        deployment = self._read("Deployment", object_name(variant))
        if deployment is None or (ready and not _is_ready(deployment)):
            raise DeployError(
                f"refusing to send traffic to the {variant} variant: its Deployment "
                f"{object_name(variant)} is {'missing' if deployment is None else 'not ready'}; "
                f"deploy('{variant}', <version>) first"
            )

    def set_canary_weight(self, percent: int) -> None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise DeployError(f"canary weight must be an integer percentage in [0, 100], got {percent!r}")
        weights: dict[str, int] = {"stable": 100 - percent, "canary": percent}
        # Traffic moves onto the canary only once it is ready; back to stable it always may (a
        # rollback must not wait for stable's pods), as long as stable exists at all.
        if percent > 0:
            self._require_serving("canary", ready=True)
        if percent < 100:
            self._require_serving("stable", ready=False)
        from kubernetes import client

        api = client.CustomObjectsApi(self.api_client)
        for attempt in range(3):
            route = self._read("HTTPRoute", ROUTE_NAME)
            if route is None and percent == 0:
                return  # no route, no traffic: the canary already gets none (a rollback may proceed)
            if route is None:
                raise DeployError(
                    f"no HTTPRoute {ROUTE_NAME} in {self.namespace}: deploy('stable', <version>) creates it"
                )
            rules = [dict(rule) for rule in route.get("spec", {}).get("rules", [])]
            ours = [
                i for i, rule in enumerate(rules) if any(_is_ours(r) for r in rule.get("backendRefs", []))
            ]
            if ours:
                for i in ours:
                    rules[i]["backendRefs"] = [
                        r for r in rules[i]["backendRefs"] if not _is_ours(r)
                    ] + backend_refs(weights)
            else:
                rules = render_route(self.settings, weights)["spec"]["rules"]
            # A merge patch replaces the rules list wholesale (CRDs have no strategic merge), so
            # it carries the resourceVersion it was computed from: a concurrent edit makes the
            # API server answer 409 instead of being overwritten, and we recompute.
            body = {
                "metadata": {"resourceVersion": route["metadata"]["resourceVersion"]},
                "spec": {"rules": rules},
            }
            try:
                self._call(
                    f"setting canary weight {percent}% on HTTPRoute {ROUTE_NAME}",
                    api.patch_namespaced_custom_object,
                    GATEWAY_GROUP,
                    GATEWAY_VERSION,
                    self.namespace,
                    HTTPROUTES,
                    ROUTE_NAME,
                    body,
                    field_manager=FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                )
                return
            except _WriteConflict:
                if attempt == 2:
                    raise

    def remove(self, variant: Variant) -> None:
        if variant not in VARIANTS:
            raise DeployError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        weight = route_weights(self._read("HTTPRoute", ROUTE_NAME))[variant]
        if weight > 0:
            raise DeployError(
                f"refusing to remove the {variant} variant while it takes {weight}% of traffic: "
                "move its weight to 0 first (set_canary_weight)"
            )
        from kubernetes import client

        name = object_name(variant)
        options = {"propagation_policy": "Background"}
        # the autoscaler first, so it does not fight the deletion; the Service last
        for kind, delete in (
            (
                "HorizontalPodAutoscaler",
                client.AutoscalingV2Api(self.api_client).delete_namespaced_horizontal_pod_autoscaler,
            ),
            ("Deployment", client.AppsV1Api(self.api_client).delete_namespaced_deployment),
            (
                "PodDisruptionBudget",
                client.PolicyV1Api(self.api_client).delete_namespaced_pod_disruption_budget,
            ),
            ("Service", client.CoreV1Api(self.api_client).delete_namespaced_service),
        ):
            self._call(f"deleting {kind} {name}", delete, name, self.namespace, **options)

    def status(self) -> TargetStatus:
        weights = route_weights(self._read("HTTPRoute", ROUTE_NAME))
        variants = {}
        for variant in VARIANTS:
            deployment = self._read("Deployment", object_name(variant))
            labels = (deployment or {}).get("metadata", {}).get("labels", {})
            variants[variant] = VariantStatus(
                variant=variant,
                model_version=labels.get("model-version"),
                weight=weights[variant],
                ready=_is_ready(deployment),
                endpoint=None
                if deployment is None
                else f"http://{object_name(variant)}.{self.namespace}.svc:{SERVING_PORT}",
            )
        return TargetStatus(endpoint=f"{ROUTE_SCHEME}://{self.settings.serving.hostname}", variants=variants)

    # -- metrics --

    def metrics(self, variant: Variant) -> MetricsSnapshot:
        """Sums over the variant's pods now, read from Prometheus.

        Only series of the version the Deployment runs count: a replaced version's series stay
        in Prometheus for minutes after its pods are gone. Errors are 5xx responses; a 4xx is
        the client's fault, not the model's.
        """
        url = self.settings.serving.prometheus_url
        if not url:
            raise DeployError(
                "the kubernetes target reads serving metrics from Prometheus: set "
                "DRIFTLOOP_SERVING__PROMETHEUS_URL (e.g. http://prometheus.monitoring:9090)"
            )
        deployment = self._read("Deployment", object_name(variant))
        version = (deployment or {}).get("metadata", {}).get("labels", {}).get("model-version")
        matchers = [f'namespace="{self.namespace}"', f'variant="{variant}"']
        if version is not None:
            matchers.append(f'model_version="{version}"')
        selector = ",".join(matchers)
        query = PrometheusQuery(url)
        return MetricsSnapshot(
            variant=variant,
            model_version=version,
            requests=query.scalar(f"sum({REQUESTS_TOTAL}{{{selector}}})"),
            errors=query.scalar(f'sum({REQUESTS_TOTAL}{{{selector},status=~"5.."}})'),
            predictions=query.scalar(f"sum({PREDICTIONS_TOTAL}{{{selector}}})"),
            latency_buckets=query.buckets(f"sum by (le) ({LATENCY_SECONDS}_bucket{{{selector}}})"),
            score_buckets=query.buckets(f"sum by (le) ({SCORE}_bucket{{{selector}}})"),
        )


class PrometheusQuery:
    """Instant queries against the Prometheus HTTP API (``/api/v1/query``)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def vector(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        hint = (
            f"check DRIFTLOOP_SERVING__PROMETHEUS_URL ({self.base_url}), that Prometheus is up and "
            "reachable from this pod, and that it scrapes the serving pods (prometheus.io/* annotations)"
        )
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise DeployError(f"Prometheus refused {promql!r}: HTTP {exc.code} {detail}; {hint}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DeployError(f"Prometheus query {promql!r} failed: {exc}; {hint}") from exc
        if payload.get("status") != "success" or payload.get("data", {}).get("resultType") != "vector":
            raise DeployError(f"Prometheus answered {promql!r} with {str(payload)[:300]}; {hint}")
        return payload["data"]["result"]

    def scalar(self, promql: str) -> float:
        """The single value of a ``sum(...)``; 0 when no series matched yet."""
        result = self.vector(promql)
        return float(result[0]["value"][1]) if result else 0.0

    def buckets(self, promql: str) -> dict[float, float]:
        """``sum by (le)`` of a histogram as {upper bound: cumulative count} (``+Inf`` → inf)."""
        return {float(s["metric"]["le"]): float(s["value"][1]) for s in self.vector(promql)}
