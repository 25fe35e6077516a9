"""The ``kubernetes`` feature-job runner: Spark on Kubernetes in cluster mode. driftloop creates the
driver Pod (the task waits for it, reads its outcome, deletes it) and Spark starts the executors.

Why a driver Pod rather than a ``SparkApplication`` for the Spark operator: the pod is what
``spark-submit --deploy-mode cluster`` itself would create, minus what we could not control
through it, so nothing has to be installed and upgraded in the cluster beyond Spark's own
scheduler backend; the security context, the Secret references and the executor pod template
are plain Pod fields, not ones an operator's mutating webhook must inject (and silently drops
when it is not running); the task reads the outcome straight from the driver's termination
message; and the whole job is two core objects that kubernetes-validate checks exactly. The
driver runs the CLI's ``driftloop features`` on a ``k8s://`` master with its pod IP as the
driver address; executors use the same image, the pod template mounted from a ConfigMap, and
are owned by the driver pod, so deleting it deletes them.

What the tests here cannot show (no cluster, no image): that the Spark job image starts under
this security context and brings the executor entry point (Spark's ``/opt/entrypoint.sh``),
that the driver reaches the API server with its service account and the executors reach the
driver, and that the object store accepts the credentials. The fake API server in the tests
models the wire protocol and pod phases, not scheduling or admission.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from driftloop.deploy.base import DeployError
from driftloop.deploy.kubernetes import APPLY_PATCH, FIELD_MANAGER, call_api, check_image, load_api_client
from driftloop.feature_jobs.base import FeatureJobError, FeatureJobRunner
from driftloop.features import FeatureRunReport
from driftloop.log import get_logger

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from driftloop.config import Settings

log = get_logger(__name__)

APP = "driftloop-features"
# the in-cluster API server, as every pod resolves it
MASTER = "k8s://https://kubernetes.default.svc"
DRIVER_CONTAINER = "driver"
EXECUTOR_CONTAINER = "executor"
# Spark's own cluster-mode defaults, fixed so network policies can name them
DRIVER_PORT = 7078
BLOCK_MANAGER_PORT = 7079
CONF_DIR = "/etc/driftloop/spark"
EXECUTOR_TEMPLATE = "executor-pod.yaml"
DATASET_FILE = "dataset.yaml"
TERMINATION_LOG = "/dev/termination-log"
SCRATCH = "/tmp"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "aws-access-key-id", "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key"}
LOG_TAIL_LINES = 200

# Waiting reasons of a container that will not start by itself: fail now, not at the timeout.
_STUCK = {
    "ErrImagePull": "check that DRIFTLOOP_SPARK_JOB__IMAGE is pushed and pullable from the namespace",
    "ImagePullBackOff": "check that DRIFTLOOP_SPARK_JOB__IMAGE is pushed and pullable from the namespace",
    "InvalidImageName": "fix DRIFTLOOP_SPARK_JOB__IMAGE",
    "CreateContainerConfigError": "usually a missing Secret or key: the Secret "
    "DRIFTLOOP_SPARK_JOB__S3_CREDENTIALS_SECRET names needs aws-access-key-id and "
    "aws-secret-access-key (or set it empty to use the service account's workload identity)",
    "CreateContainerError": "see `kubectl describe pod` for the container runtime's message",
}

# checkov skips, justified where checkov reads them (the pods' annotations)
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images are pinned by tag (check_image refuses latest/untagged); "
    "a digest may be appended to DRIFTLOOP_SPARK_JOB__IMAGE but is not required",
    "CKV_K8S_35": "driftloop is configured by DRIFTLOOP_* env vars (pydantic-settings) and the AWS SDK "
    "by AWS_* env vars; secrets come from secretKeyRef, never literal values",
    "CKV2_K8S_6": "NetworkPolicies for the spark-jobs namespace are owned by "
    "terraform/modules/k8s-namespaces (default deny, same-namespace, kube-api, HTTPS)",
    "CKV_K8S_8": "a batch Spark driver/executor serves no traffic: there is nothing for a liveness "
    "probe to check that the process exiting does not already report",
    "CKV_K8S_9": "a batch Spark driver/executor takes no traffic, so readiness gates nothing",
    "CKV_K8S_38": "the driver creates, watches and deletes its executor pods through the API "
    "(Role spark-driver); executors get no token",
}
_DRIVER_SKIPS = ("CKV_K8S_43", "CKV_K8S_35", "CKV2_K8S_6", "CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_38")
_EXECUTOR_SKIPS = ("CKV_K8S_43", "CKV_K8S_35", "CKV2_K8S_6", "CKV_K8S_8", "CKV_K8S_9")


def _checkov_annotations(ids: tuple[str, ...]) -> dict[str, str]:
    return {f"checkov.io/skip{i}": f"{check}={CHECKOV_SKIPS[check]}" for i, check in enumerate(ids, 1)}


def driver_name(run_key: str) -> str:
    """The driver pod's name for a run: the same for every try, a valid executor-name prefix."""
    return f"{APP}-{hashlib.sha256(run_key.encode()).hexdigest()[:10]}"


# ----------------------------------------------------------------------------- rendering ----


def _labels(role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/part-of": "driftloop",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "spark-role": role,
    }


def _check(settings: Settings) -> str:
    """The image, once the settings can run a job in a pod at all; FeatureJobError otherwise."""
    if not settings.lake_uri.startswith("s3a://"):
        raise FeatureJobError(
            f"a feature job on Kubernetes reads and writes the lake from pods, but {settings.lake_uri!r} "
            "is a local folder: set DRIFTLOOP_LAKE_ROOT=s3a://<bucket>/<prefix>"
        )
    try:
        return check_image(settings.spark_job.image, "DRIFTLOOP_SPARK_JOB__IMAGE")
    except DeployError as exc:
        raise FeatureJobError(str(exc)) from None


def _memory_overhead_mib(heap_mib: int, factor: float) -> int:
    # Spark's own rule (spark.{driver,executor}.memoryOverhead): a share of the heap, at least 384 MiB
    return max(384, int(heap_mib * factor))


def _resources(cores: int, memory_mib: int) -> dict[str, Any]:
    # memory: request = limit (memory cannot be throttled, only killed); CPU may burst to twice
    return {
        "requests": {"cpu": str(cores), "memory": f"{memory_mib}Mi"},
        "limits": {"cpu": str(2 * cores), "memory": f"{memory_mib}Mi"},
    }


def _security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security_context(settings: Settings) -> dict[str, Any]:
    uid = settings.spark_job.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _shared_env(settings: Settings) -> list[dict[str, Any]]:
    """What driver and executors both need: a writable HOME, the region, S3 keys by reference."""
    env: list[dict[str, Any]] = [{"name": "HOME", "value": SCRATCH}]
    # the same region as the task that starts the job (the AWS SDK reads these; no secret)
    env += [
        {"name": k, "value": os.environ[k]} for k in ("AWS_REGION", "AWS_DEFAULT_REGION") if k in os.environ
    ]
    secret = settings.spark_job.s3_credentials_secret
    if secret:
        env += [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for name, key in S3_KEYS.items()
        ]
    return env


def spark_properties(settings: Settings, name: str) -> dict[str, str]:
    """spark-defaults.conf of the driver: where and how big its executors are.

    The session factory (:mod:`driftloop.lake.spark`) adds the rest from DRIFTLOOP_* settings,
    as on any other master.
    """
    job = settings.spark_job
    overhead = _memory_overhead_mib(job.executor_memory_mib, 0.1)
    return {
        "spark.kubernetes.namespace": job.namespace,
        "spark.kubernetes.container.image": job.image,
        "spark.kubernetes.container.image.pullPolicy": "Always",
        # executors are owned by the driver pod (deleting it deletes them) and named after it
        "spark.kubernetes.driver.pod.name": name,
        "spark.kubernetes.executor.podNamePrefix": name,
        "spark.kubernetes.executor.podTemplateFile": f"{CONF_DIR}/{EXECUTOR_TEMPLATE}",
        "spark.kubernetes.executor.podTemplateContainerName": EXECUTOR_CONTAINER,
        "spark.kubernetes.authenticate.executor.serviceAccountName": job.service_account,
        "spark.kubernetes.executor.deleteOnTermination": "true",
        "spark.executor.instances": str(job.executor_instances),
        "spark.executor.cores": str(job.executor_cores),
        "spark.executor.memory": f"{job.executor_memory_mib}m",
        "spark.executor.memoryOverhead": f"{overhead}m",
        "spark.kubernetes.executor.request.cores": str(job.executor_cores),
        "spark.kubernetes.executor.limit.cores": str(2 * job.executor_cores),
        "spark.driver.port": str(DRIVER_PORT),
        "spark.driver.blockManager.port": str(BLOCK_MANAGER_PORT),
        "spark.blockManager.port": str(BLOCK_MANAGER_PORT),
    }


def render_executor_template(settings: Settings) -> dict[str, Any]:
    """The executor pod template: what Spark does not set itself (security, scratch, secrets)."""
    job = settings.spark_job
    heap = job.executor_memory_mib
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            # Spark names the executors and sets their namespace; stated here for reviewers and checkov
            "namespace": job.namespace,
            "labels": _labels("executor"),
            "annotations": _checkov_annotations(_EXECUTOR_SKIPS),
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": _pod_security_context(settings),
            "containers": [
                {
                    "name": EXECUTOR_CONTAINER,
                    "image": job.image,
                    "imagePullPolicy": "Always",
                    "env": _shared_env(settings),
                    # what Spark sets from the properties above, repeated so the template is honest
                    "resources": _resources(job.executor_cores, heap + _memory_overhead_mib(heap, 0.1)),
                    "securityContext": _security_context(),
                    "volumeMounts": [{"name": "tmp", "mountPath": SCRATCH}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        },
    }


def render_config_map(settings: Settings, name: str) -> dict[str, Any]:
    """spark-defaults.conf, the executor pod template and the dataset contract, for the driver."""
    data = {
        "spark-defaults.conf": "".join(f"{k} {v}\n" for k, v in spark_properties(settings, name).items()),
        EXECUTOR_TEMPLATE: yaml.safe_dump(render_executor_template(settings), sort_keys=False),
    }
    if settings.dataset_file is not None:
        # the driver builds exactly the contract this task was configured with
        data[DATASET_FILE] = settings.dataset_file.read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": settings.spark_job.namespace, "labels": _labels("driver")},
        "data": data,
    }


def driver_env(settings: Settings) -> list[dict[str, Any]]:
    """The driver's environment: the DRIFTLOOP_* settings the feature job reads, secrets by reference."""
    job = settings.spark_job
    plain = {
        "DRIFTLOOP_PROFILE": "kubernetes",
        "DRIFTLOOP_LAKE_ROOT": settings.lake_uri,
        "DRIFTLOOP_DATA_DIR": f"{SCRATCH}/driftloop",
        "DRIFTLOOP_SPARK_MASTER": MASTER,
        "DRIFTLOOP_SPARK_JARS_DIR": job.jars_dir,
        "DRIFTLOOP_SPARK_DRIVER_MEMORY": f"{job.driver_memory_mib}m",
        "DRIFTLOOP_SPARK_SHUFFLE_PARTITIONS": str(settings.spark_shuffle_partitions),
        "DRIFTLOOP_SPARK_DELTA_SNAPSHOT_PARTITIONS": str(settings.spark_delta_snapshot_partitions),
        # the driver runs the job itself: it must never hand it on again
        "DRIFTLOOP_SPARK_JOB__RUNNER": "local",
        # spark-submit (started by PySpark) reads spark-defaults.conf from here
        "SPARK_CONF_DIR": CONF_DIR,
    }
    if settings.s3_endpoint_url:
        plain["DRIFTLOOP_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.dataset_file is not None:
        plain["DRIFTLOOP_DATASET_FILE"] = f"{CONF_DIR}/{DATASET_FILE}"
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    # executors connect back to the driver on its pod IP
    env.append(
        {"name": "DRIFTLOOP_SPARK_DRIVER_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    )
    return env + _shared_env(settings)


def render_driver_pod(settings: Settings, name: str, run_key: str) -> dict[str, Any]:
    """The driver pod: ``driftloop features`` on a k8s:// master, hardened, bounded in time."""
    image = _check(settings)
    job = settings.spark_job
    heap = job.driver_memory_mib
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": _labels("driver"),
            "annotations": {"driftloop/run-key": run_key, **_checkov_annotations(_DRIVER_SKIPS)},
        },
        "spec": {
            "restartPolicy": "Never",
            # Kubernetes stops the driver at the deadline even if the task waiting for it is gone
            "activeDeadlineSeconds": math.ceil(job.timeout_minutes * 60),
            "serviceAccountName": job.service_account,
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "securityContext": _pod_security_context(settings),
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": DRIVER_CONTAINER,
                    "image": image,
                    "imagePullPolicy": "Always",
                    # arguments to the image's entry point, which runs them under an init (tini)
                    "args": ["driftloop", "features", "--report-file", TERMINATION_LOG],
                    "env": driver_env(settings),
                    "ports": [
                        {"name": "driver-rpc", "containerPort": DRIVER_PORT, "protocol": "TCP"},
                        {"name": "blockmanager", "containerPort": BLOCK_MANAGER_PORT, "protocol": "TCP"},
                    ],
                    # the JVM heap plus Python and off-heap memory (Spark's factor for PySpark drivers)
                    "resources": _resources(job.driver_cores, heap + _memory_overhead_mib(heap, 0.4)),
                    "securityContext": _security_context(),
                    # the CLI writes its report (or error) there; a crash leaves the log's tail instead
                    "terminationMessagePath": TERMINATION_LOG,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": SCRATCH},
                        {"name": "spark-conf", "mountPath": CONF_DIR, "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "spark-conf", "configMap": {"name": name}},
            ],
        },
    }


def render_job(settings: Settings, run_key: str) -> list[dict[str, Any]]:
    """Everything one run creates, in apply order: the ConfigMap the driver mounts, the driver."""
    name = driver_name(run_key)
    pod = render_driver_pod(settings, name, run_key)
    return [render_config_map(settings, name), pod]


# --------------------------------------------------------------------------- pod state ----


def _driver_state(pod: dict[str, Any]) -> dict[str, Any]:
    """The driver container's status entry (empty before the kubelet reports one)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == DRIVER_CONTAINER:
            return status
    return {}


def stuck_reason(pod: dict[str, Any]) -> str | None:
    """Why a pending driver will never start by itself, with what to do; None while it may."""
    waiting = (_driver_state(pod).get("state") or {}).get("waiting") or {}
    hint = _STUCK.get(waiting.get("reason", ""))
    if hint is None:
        return None
    return f"{waiting['reason']}: {waiting.get('message', '')}; {hint}"


def pod_outcome(pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The terminated state of a finished driver and its termination message."""
    terminated = (_driver_state(pod).get("state") or {}).get("terminated") or {}
    return terminated, terminated.get("message") or ""


def report_from_message(message: str) -> FeatureRunReport:
    """The run report the driver wrote as its termination message."""
    try:
        return FeatureRunReport(**json.loads(message))
    except (ValueError, TypeError) as exc:
        raise FeatureJobError(
            f"the feature job's driver succeeded but left no run report ({message[:300]!r}): is the "
            "Spark job image (DRIFTLOOP_SPARK_JOB__IMAGE) older than this driftloop, without "
            "`driftloop features --report-file`?"
        ) from exc


def failure_message(pod: dict[str, Any], settings: Settings) -> str:
    """What went wrong with a failed driver and what to do about it."""
    meta, status = pod["metadata"], pod.get("status") or {}
    name, namespace = meta["name"], meta.get("namespace")
    terminated, message = pod_outcome(pod)
    # the CLI's JSON error, else the log tail the kubelet kept (a crash, a kill)
    with contextlib.suppress(ValueError, TypeError, KeyError):
        message = json.loads(message)["error"]
    # the pod's own reason (DeadlineExceeded, Evicted) says more than the container's (Error)
    reason = status.get("reason") or terminated.get("reason") or "Failed"
    detail = message.strip() or status.get("message") or "no message"
    what = f"feature job driver {namespace}/{name} failed ({reason}"
    if "exitCode" in terminated:
        what += f", exit code {terminated['exitCode']}"
    hint = {
        "OOMKilled": "the driver ran out of memory: raise DRIFTLOOP_SPARK_JOB__DRIVER_MEMORY_MIB "
        f"(now {settings.spark_job.driver_memory_mib})",
        "DeadlineExceeded": "it ran past DRIFTLOOP_SPARK_JOB__TIMEOUT_MINUTES "
        f"({settings.spark_job.timeout_minutes:g}): raise it or add executors "
        "(DRIFTLOOP_SPARK_JOB__EXECUTOR_INSTANCES)",
        "Evicted": "the node reclaimed memory or disk from it: see `kubectl get events` in the namespace",
    }.get(reason, "fix the cause above")
    return (
        f"{what}): {detail}\n{hint}; the driver's last {LOG_TAIL_LINES} log lines are in this task's "
        "log above. A retry starts a new driver; the job is idempotent (bronze version watermark)."
    )


# ---------------------------------------------------------------------------- the runner ----


class KubernetesFeatureRunner(FeatureJobRunner):
    """Submits the feature job as a driver pod, waits for it, reads its report, cleans up.

    ``api_client`` defaults to in-cluster configuration (an Airflow task pod), falling back to
    the local kubeconfig; tests pass a client pointed at a fake API server.
    """

    def __init__(self, settings: Settings, api_client: ApiClient | None = None) -> None:
        self.settings = settings
        self.namespace = settings.spark_job.namespace
        self._api_client = api_client

    @property
    def api_client(self) -> ApiClient:
        if self._api_client is None:
            self._api_client = load_api_client(FeatureJobError)
        return self._api_client

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the API; 404 → None; anything else → FeatureJobError saying what to check."""
        return call_api(
            self.api_client,
            what,
            self.namespace,
            fn,
            *args,
            error=FeatureJobError,
            rights="Role airflow-spark-submitter",
            **kwargs,
        )

    def _read_pod(self, name: str) -> dict[str, Any] | None:
        found = self._call(f"reading pod {name}", self._core().read_namespaced_pod, name, self.namespace)
        return None if found is None else self.api_client.sanitize_for_serialization(found)

    def _apply(self, obj: dict[str, Any]) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        patch = {
            "ConfigMap": self._core().patch_namespaced_config_map,
            "Pod": self._core().patch_namespaced_pod,
        }[kind]
        options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        if self._call(f"applying {kind} {name}", patch, name, self.namespace, obj, **options) is None:
            raise FeatureJobError(
                f"applying {kind} {name}: the API server answered 404 (does namespace {self.namespace} "
                "exist? terraform/modules/k8s-namespaces creates it)"
            )

    def _cleanup(self, name: str) -> None:
        """Delete the driver (its executors go with it: they are owned by it) and its ConfigMap."""
        core = self._core()
        self._call(
            f"deleting pod {name}",
            core.delete_namespaced_pod,
            name,
            self.namespace,
            propagation_policy="Background",
        )
        self._call(f"deleting ConfigMap {name}", core.delete_namespaced_config_map, name, self.namespace)

    def _log_tail(self, name: str) -> None:
        """Copy the driver's last log lines into this task's log (the pod is deleted next)."""
        try:
            text = self._call(
                f"reading the log of pod {name}",
                self._core().read_namespaced_pod_log,
                name,
                self.namespace,
                container=DRIVER_CONTAINER,
                tail_lines=LOG_TAIL_LINES,
            )
        except FeatureJobError as exc:  # the outcome matters more than its log
            log.warning("features.driver_log_unreadable", pod=name, error=str(exc))
            return
        if text:
            log.info("features.driver_log", pod=name, tail=f"\n{text}")

    def run(self, run_key: str) -> FeatureRunReport:
        name = driver_name(run_key)
        pod = self._read_pod(name)
        phase = (pod or {}).get("status", {}).get("phase")
        if pod is not None and phase in ("Succeeded", "Failed"):
            # an earlier try's driver finished after that try was lost: use its success, or
            # clear its failure away so this try can run the job again
            if phase == "Succeeded":
                log.info("features.driver_adopted", pod=name, phase=phase)
                return self._finish(pod)
            log.warning("features.earlier_driver_failed", pod=name, error=failure_message(pod, self.settings))
            self._cleanup(name)
            self._wait_gone(name)
            pod = None
        if pod is None:
            for obj in render_job(self.settings, run_key):
                self._apply(obj)
            log.info(
                "features.driver_submitted",
                pod=name,
                namespace=self.namespace,
                image=self.settings.spark_job.image,
            )
        else:
            # never two drivers for one run: wait for the one an earlier try started
            log.info("features.driver_adopted", pod=name, phase=phase)
        return self._finish(self._wait(name))

    def _wait_gone(self, name: str) -> None:
        deadline = time.monotonic() + 120
        while self._read_pod(name) is not None:
            if time.monotonic() >= deadline:
                raise FeatureJobError(
                    f"pod {self.namespace}/{name} from an earlier try is still being deleted after 120 s; "
                    "the next retry will try again"
                )
            time.sleep(self.settings.spark_job.poll_seconds)

    def _wait(self, name: str) -> dict[str, Any]:
        """The driver pod once it has finished; FeatureJobError if it cannot start or overruns."""
        job = self.settings.spark_job
        deadline = time.monotonic() + job.timeout_minutes * 60
        last_phase = None
        while True:
            pod = self._read_pod(name)
            if pod is None:
                raise FeatureJobError(
                    f"feature job driver {self.namespace}/{name} vanished while running (deleted by "
                    "someone, or evicted and garbage-collected); the task's retry starts a new one"
                )
            phase = (pod.get("status") or {}).get("phase")
            if phase != last_phase:
                log.info("features.driver_phase", pod=name, phase=phase)
                last_phase = phase
            if phase in ("Succeeded", "Failed"):
                return pod
            stuck = stuck_reason(pod)
            if stuck is not None:
                self._cleanup(name)
                raise FeatureJobError(f"feature job driver {self.namespace}/{name} cannot start: {stuck}")
            if time.monotonic() >= deadline:
                self._cleanup(name)
                raise FeatureJobError(
                    f"feature job driver {self.namespace}/{name} still {phase} after "
                    f"{job.timeout_minutes:g} min; deleted it. A pod Pending that long is unschedulable "
                    "(resource quota of the namespace, node capacity: `kubectl describe pod`); a Running "
                    "one needs DRIFTLOOP_SPARK_JOB__TIMEOUT_MINUTES raised or more executors"
                )
            time.sleep(job.poll_seconds)

    def _finish(self, pod: dict[str, Any]) -> FeatureRunReport:
        """Log the driver's tail, delete its objects, and return its report or raise its failure."""
        name = pod["metadata"]["name"]
        try:
            self._log_tail(name)
        finally:
            self._cleanup(name)
        if pod["status"]["phase"] != "Succeeded":
            raise FeatureJobError(failure_message(pod, self.settings))
        report = report_from_message(pod_outcome(pod)[1])
        log.info("features.driver_done", pod=name, **report.as_dict())
        return report
