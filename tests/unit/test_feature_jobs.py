"""Feature-job runners: which one the settings choose, the Spark-on-Kubernetes objects against the
real Kubernetes OpenAPI schemas and checkov, and the submit/wait/cleanup logic as the official
client really sends it, to the fake API server (tests/unit/fake_kube_api.py).

No cluster and no Spark job image exist here: that the image starts under this security context
and that Spark's executors reach the driver are not shown (see feature_jobs/kubernetes.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from kubernetes.client import ApiClient, Configuration

from driftloop.cli import app
from driftloop.config import Settings, SparkJobSettings
from driftloop.feature_jobs import FeatureJobError, get_feature_runner
from driftloop.feature_jobs.kubernetes import (
    CHECKOV_SKIPS,
    CONF_DIR,
    DRIVER_CONTAINER,
    EXECUTOR_TEMPLATE,
    MASTER,
    KubernetesFeatureRunner,
    driver_name,
    render_job,
    spark_properties,
)
from driftloop.feature_jobs.local import LocalFeatureRunner
from driftloop.features import FeatureRunReport
from tests.unit import checkov_scan
from tests.unit.fake_kube_api import APPLY, FakeKubeApi, PodPlan
from tests.unit.test_kubernetes_target import K8S_VERSIONS

NS = "spark-jobs"
RUN_KEY = "build_features/asset_triggered__2026-03-01T10:15:00+00:00"
NAME = driver_name(RUN_KEY)
POD = f"/api/v1/namespaces/{NS}/pods/{NAME}"
CONFIG_MAP = f"/api/v1/namespaces/{NS}/configmaps/{NAME}"
REPORT = FeatureRunReport(
    bronze_version=7,
    features_version=5,
    previous_bronze_version=6,
    new_events=1200,
    rows_merged=1380,
    skipped=False,
)


def _settings(**job: Any) -> Settings:
    return Settings(
        profile="kubernetes",
        lake_root="s3a://acme-driftloop-lake/prod",
        s3_endpoint_url="https://s3.eu-west-1.amazonaws.com",
        spark_job=SparkJobSettings(poll_seconds=0.01, **job),
    )


def _objects(settings: Settings) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The ConfigMap, the driver pod and the executor pod template it carries."""
    config_map, pod = render_job(settings, RUN_KEY)
    template = yaml.safe_load(config_map["data"][EXECUTOR_TEMPLATE])
    return config_map, pod, template


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ---------------------------------------------------------------------- which runner ----


def test_local_runner_is_the_default() -> None:
    """What the build_features DAG runs on the embedded defaults: the job in-process."""
    assert isinstance(get_feature_runner(Settings()), LocalFeatureRunner)


def test_kubernetes_profile_runs_spark_on_kubernetes_unless_told_otherwise() -> None:
    assert isinstance(get_feature_runner(_settings()), KubernetesFeatureRunner)
    # a small installation may keep Spark in the Airflow worker pod
    assert isinstance(get_feature_runner(_settings(runner="local")), LocalFeatureRunner)


def test_settings_read_from_the_names_terraform_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_SPARK_JOB__NAMESPACE", "team-spark")
    monkeypatch.setenv("DRIFTLOOP_SPARK_JOB__SERVICE_ACCOUNT", "spark-sa")
    monkeypatch.setenv("DRIFTLOOP_SPARK_JOB__S3_CREDENTIALS_SECRET", "")
    job = Settings().spark_job
    assert (job.namespace, job.service_account, job.s3_credentials_secret) == ("team-spark", "spark-sa", "")


# --------------------------------------------------------------------------- schemas ----


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_against_kubernetes_openapi(version: str) -> None:
    for obj in _objects(_settings()):
        kubernetes_validate.validate(obj, version, strict=True)


def test_executor_template_is_validated_strictly() -> None:
    template = _objects(_settings())[2]
    template["spec"]["containers"][0]["securityContxt"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(template, K8S_VERSIONS[0], strict=True)


# ------------------------------------------------------------------ rendered content ----


def test_driver_runs_the_cli_feature_job_on_a_kubernetes_master() -> None:
    settings = _settings()
    config_map, pod, _ = _objects(settings)
    (container,) = pod["spec"]["containers"]
    assert container["name"] == DRIVER_CONTAINER
    assert container["image"] == "ghcr.io/driftloop/spark-job:0.1.0"
    # the entry point is the CLI command a person runs by hand, with the option it really has
    command = typer.main.get_command(app)
    features = command.commands[container["args"][1]]  # type: ignore[attr-defined]
    assert container["args"][0] == "driftloop"
    assert "--report-file" in {o for p in features.params for o in p.opts}
    assert container["args"][2:] == ["--report-file", container["terminationMessagePath"]]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = _env(container)
    assert env["DRIFTLOOP_SPARK_MASTER"] == MASTER == "k8s://https://kubernetes.default.svc"
    assert env["DRIFTLOOP_SPARK_DRIVER_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["DRIFTLOOP_LAKE_ROOT"] == "s3a://acme-driftloop-lake/prod"
    assert env["DRIFTLOOP_S3_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert env["DRIFTLOOP_SPARK_JOB__RUNNER"] == "local"  # the driver never hands the job on again
    assert len(env) == len(container["env"])  # no name twice (last one silently wins)
    # every DRIFTLOOP_* name the driver gets is a real setting
    for name in (n for n in env if n.startswith("DRIFTLOOP_")):
        field, _, nested = name.removeprefix("DRIFTLOOP_").lower().partition("__")
        assert field in Settings.model_fields, name
        assert not nested or nested in Settings.model_fields[field].annotation.model_fields, name
    # Spark reads spark-defaults.conf from SPARK_CONF_DIR: the ConfigMap is mounted there
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert env["SPARK_CONF_DIR"] == CONF_DIR
    assert volumes[mounts[CONF_DIR]]["configMap"]["name"] == config_map["metadata"]["name"] == NAME
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env["DRIFTLOOP_DATA_DIR"].startswith("/tmp/")
    assert env["HOME"] == "/tmp"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 120 * 60
    assert pod["spec"]["serviceAccountName"] == "spark-driver"
    assert pod["metadata"]["namespace"] == NS
    assert pod["metadata"]["annotations"]["driftloop/run-key"] == RUN_KEY


def test_spark_properties_place_and_size_the_executors() -> None:
    settings = _settings(executor_instances=4, executor_cores=3, executor_memory_mib=6000)
    config_map, _, template = _objects(settings)
    lines = config_map["data"]["spark-defaults.conf"].splitlines()
    conf = dict(line.split(" ", 1) for line in lines)
    assert conf == spark_properties(settings, NAME)
    assert conf["spark.kubernetes.namespace"] == NS
    assert conf["spark.kubernetes.container.image"] == settings.spark_job.image
    assert conf["spark.kubernetes.driver.pod.name"] == NAME  # executors are owned by the driver pod
    assert conf["spark.kubernetes.authenticate.executor.serviceAccountName"] == "spark-driver"
    assert conf["spark.kubernetes.executor.podTemplateFile"] == f"{CONF_DIR}/{EXECUTOR_TEMPLATE}"
    (executor,) = template["spec"]["containers"]
    assert conf["spark.kubernetes.executor.podTemplateContainerName"] == executor["name"]
    assert (conf["spark.executor.instances"], conf["spark.executor.cores"]) == ("4", "3")
    # the template's resources are what Spark will set: heap plus overhead, cores
    assert executor["resources"]["requests"] == {"cpu": "3", "memory": "6600Mi"}
    assert conf["spark.executor.memory"] == "6000m"
    assert conf["spark.executor.memoryOverhead"] == "600m"
    # executor pod names are <prefix>-exec-<n>: the prefix must leave room within 63 characters
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", NAME)
    assert len(NAME) <= 47
    assert driver_name(RUN_KEY) == NAME != driver_name(RUN_KEY + "x")


def test_driver_and_executors_are_non_root_and_read_only() -> None:
    _, pod, template = _objects(_settings())
    for spec in (pod["spec"], template["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
        assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    # only the driver talks to the API server (it creates its executors)
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert template["spec"]["automountServiceAccountToken"] is False


def test_s3_credentials_only_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-never-rendered")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    rendered = yaml.safe_dump_all(_objects(_settings()))
    assert "never-rendered" not in rendered
    for container in (
        _objects(_settings())[1]["spec"]["containers"][0],
        _objects(_settings())[2]["spec"]["containers"][0],
    ):
        env = _env(container)
        assert env["AWS_ACCESS_KEY_ID"] == {
            "secretKeyRef": {"name": "driftloop-spark", "key": "aws-access-key-id"}
        }
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "secretKeyRef": {"name": "driftloop-spark", "key": "aws-secret-access-key"}
        }
        assert env["AWS_REGION"] == "eu-west-1"
    # with workload identity (IRSA on the service account) no key is wired at all
    _, pod, template = _objects(_settings(s3_credentials_secret=""))
    for container in (pod["spec"]["containers"][0], template["spec"]["containers"][0]):
        assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]


def test_the_driver_gets_the_dataset_contract_of_the_task(tmp_path: Path) -> None:
    contract = tmp_path / "payments.yaml"
    contract.write_text("name: payments\n# the whole contract travels with the job\n")
    settings = _settings().model_copy(update={"dataset_file": contract})
    config_map, pod, _ = _objects(settings)
    assert config_map["data"]["dataset.yaml"] == contract.read_text()
    assert _env(pod["spec"]["containers"][0])["DRIFTLOOP_DATASET_FILE"] == f"{CONF_DIR}/dataset.yaml"


def test_settings_that_cannot_run_in_pods_are_refused() -> None:
    local_lake = Settings(spark_job=SparkJobSettings(runner="kubernetes"))
    with pytest.raises(FeatureJobError, match="DRIFTLOOP_LAKE_ROOT=s3a://"):
        render_job(local_lake, RUN_KEY)
    for image in ("ghcr.io/driftloop/spark-job", "ghcr.io/driftloop/spark-job:latest"):
        with pytest.raises(FeatureJobError, match="DRIFTLOOP_SPARK_JOB__IMAGE"):
            render_job(_settings(image=image), RUN_KEY)


# ---------------------------------------------------------------------------- checkov ----


def test_checkov_passes_on_rendered_yaml(tmp_path: Path) -> None:
    # the executor template as its own document too: checkov does not look inside a ConfigMap
    result = checkov_scan.scan(_objects(_settings()), tmp_path)
    assert result.parsing_errors == 0
    assert result.passed > 50, "checkov ran (almost) no check"
    assert not result.failures, "checkov findings:\n" + "\n".join(result.failures)
    assert result.skipped == set(CHECKOV_SKIPS), (
        f"skips in place but not used (or the reverse): {result.skipped}"
    )
    for obj in _objects(_settings()):
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert len(reason) >= 30, f"{obj['kind']}: {check} skipped without a reason"


# ------------------------------------------------------------- against the fake API ----


@pytest.fixture
def fake() -> Iterator[FakeKubeApi]:
    server = FakeKubeApi().start()
    yield server
    server.stop()


def _runner(fake: FakeKubeApi, **job: Any) -> KubernetesFeatureRunner:
    configuration = Configuration()
    configuration.host = fake.url
    return KubernetesFeatureRunner(_settings(**job), api_client=ApiClient(configuration))


def _finished_pod(phase: str, message: str, **terminated: Any) -> dict[str, Any]:
    pod = render_job(_settings(), RUN_KEY)[1]
    state = {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "message": message, **terminated}}
    status = {"name": DRIVER_CONTAINER, "image": "x", "imageID": "", "ready": False, "restartCount": 0}
    pod["status"] = {"phase": phase, "containerStatuses": [{**status, "state": state}]}
    return pod


def _calls(fake: FakeKubeApi) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.requests if r.method != "GET" or r.path.endswith("/log")]


def test_submit_wait_report_and_clean_up(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(reads_until_done=4, message=json.dumps(REPORT.as_dict()), log="features.done\n")
    report = _runner(fake).run(RUN_KEY)

    assert report == REPORT
    assert _calls(fake) == [
        ("PATCH", CONFIG_MAP),
        ("PATCH", POD),
        ("GET", f"{POD}/log"),
        ("DELETE", POD),
        ("DELETE", CONFIG_MAP),
    ]
    applies = [r for r in fake.requests if r.method == "PATCH"]
    assert [a.body for a in applies] == render_job(_settings(), RUN_KEY)
    for write in applies:
        assert write.content_type == APPLY
        assert write.query == {"fieldManager": ["driftloop"], "force": ["True"]}
    (log_read,) = [r for r in fake.requests if r.path.endswith("/log")]
    assert log_read.query == {"container": ["driver"], "tailLines": ["200"]}
    (delete,) = [r for r in fake.requests if r.method == "DELETE" and r.path == POD]
    # background propagation: the executors the driver owns are garbage-collected with it
    assert delete.query == {"propagationPolicy": ["Background"]}
    # it waited for the end: one look for an earlier try's driver, 4 unfinished reads, the last
    assert sum(r.method == "GET" and r.path == POD for r in fake.requests) == 1 + 4 + 1
    assert POD not in fake.objects
    assert CONFIG_MAP not in fake.objects


def test_failed_driver_fails_the_task_with_its_message(fake: FakeKubeApi) -> None:
    error = (
        "FileNotFoundError: no bronze table at s3a://acme-driftloop-lake/prod/tables/bronze_events: "
        "run ingest_events first"
    )
    fake.pod_plan = PodPlan(phase="Failed", exit_code=1, reason="Error", message=json.dumps({"error": error}))
    with pytest.raises(FeatureJobError) as failure:
        _runner(fake).run(RUN_KEY)

    message = str(failure.value)
    assert f"{NS}/{NAME} failed (Error, exit code 1): {error}" in message
    assert "last 200 log lines are in this task's log" in message
    assert "retry" in message
    assert ("GET", f"{POD}/log") in _calls(fake)
    assert POD not in fake.objects
    assert CONFIG_MAP not in fake.objects


def test_killed_driver_reports_the_log_tail_and_what_to_raise(fake: FakeKubeApi) -> None:
    # FallbackToLogsOnError: the CLI wrote nothing, the kubelet kept the log's tail
    fake.pod_plan = PodPlan(
        phase="Failed", exit_code=137, reason="OOMKilled", message="25/03/01 WARN TaskSetManager: lost"
    )
    with pytest.raises(
        FeatureJobError,
        match=r"(?s)OOMKilled, exit code 137\): 25/03/01 WARN.*DRIVER_MEMORY_MIB \(now 2048\)",
    ):
        _runner(fake).run(RUN_KEY)


def test_active_deadline_names_the_timeout_setting(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(phase="Failed", exit_code=143, reason="Error", pod_reason="DeadlineExceeded")
    with pytest.raises(FeatureJobError, match=r"(?s)DeadlineExceeded.*DRIFTLOOP_SPARK_JOB__TIMEOUT_MINUTES"):
        _runner(fake).run(RUN_KEY)


def test_driver_that_cannot_start_fails_at_once(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(waiting_reason="ImagePullBackOff", waiting_message='Back-off pulling image "x"')
    with pytest.raises(FeatureJobError, match=r"cannot start: ImagePullBackOff.*DRIFTLOOP_SPARK_JOB__IMAGE"):
        _runner(fake).run(RUN_KEY)
    assert POD not in fake.objects
    assert CONFIG_MAP not in fake.objects


def test_driver_running_past_the_timeout_is_deleted(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(reads_until_running=0, reads_until_done=None)
    with pytest.raises(FeatureJobError, match=r"still Running after .* deleted it"):
        _runner(fake, timeout_minutes=0.001).run(RUN_KEY)
    assert POD not in fake.objects
    assert CONFIG_MAP not in fake.objects


def test_a_retry_adopts_the_running_driver_of_an_earlier_try(fake: FakeKubeApi) -> None:
    """The earlier try's worker died mid-wait: never start a second job for the same run."""
    pod = render_job(_settings(), RUN_KEY)[1]
    fake.put(POD, pod, live=True)
    fake.put(CONFIG_MAP, render_job(_settings(), RUN_KEY)[0])
    fake.pod_plan = PodPlan(reads_until_running=0, reads_until_done=3, message=json.dumps(REPORT.as_dict()))

    assert _runner(fake).run(RUN_KEY) == REPORT
    assert not [r for r in fake.requests if r.method == "PATCH"]
    assert POD not in fake.objects
    assert CONFIG_MAP not in fake.objects


def test_a_retry_takes_the_report_of_a_driver_that_finished_meanwhile(fake: FakeKubeApi) -> None:
    fake.put(POD, _finished_pod("Succeeded", json.dumps(REPORT.as_dict())))
    assert _runner(fake).run(RUN_KEY) == REPORT
    assert _calls(fake) == [("GET", f"{POD}/log"), ("DELETE", POD), ("DELETE", CONFIG_MAP)]


def test_a_retry_replaces_the_failed_driver_of_an_earlier_try(fake: FakeKubeApi) -> None:
    fake.put(POD, _finished_pod("Failed", json.dumps({"error": "ConnectionError: S3 timed out"})))
    fake.pod_plan = PodPlan(message=json.dumps(REPORT.as_dict()))

    assert _runner(fake).run(RUN_KEY) == REPORT
    assert _calls(fake) == [
        ("DELETE", POD),
        ("DELETE", CONFIG_MAP),
        ("PATCH", CONFIG_MAP),
        ("PATCH", POD),
        ("GET", f"{POD}/log"),
        ("DELETE", POD),
        ("DELETE", CONFIG_MAP),
    ]


def test_success_without_a_report_says_the_image_is_stale(fake: FakeKubeApi) -> None:
    fake.pod_plan = PodPlan(message="")
    with pytest.raises(FeatureJobError, match=r"left no run report.*DRIFTLOOP_SPARK_JOB__IMAGE"):
        _runner(fake).run(RUN_KEY)


def test_missing_rights_name_the_role_to_fix(fake: FakeKubeApi) -> None:
    fake.deny = {"/configmaps/"}
    with pytest.raises(FeatureJobError, match=r"HTTP 403.*airflow-spark-submitter"):
        _runner(fake).run(RUN_KEY)
    assert POD not in fake.objects


def test_cli_writes_the_report_or_the_error_for_the_termination_message(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's entry point on an empty lake: exit 1, and the error where the kubelet reads it."""
    from typer.testing import CliRunner

    from driftloop import cli
    from driftloop.lake import spark

    # no JVM for this: the job stops at the missing bronze table before it touches Spark, and the
    # session the other tests share must not be stopped by the CLI
    monkeypatch.setattr(spark, "get_spark", lambda settings=None: None)
    monkeypatch.setattr(spark, "stop_spark", lambda: None)
    report_file = tmp_path / "termination-log"
    result = CliRunner().invoke(cli.app, ["features", "--report-file", str(report_file)])
    assert result.exit_code == 1
    error = json.loads(report_file.read_text())["error"]
    assert error.startswith("FileNotFoundError: no bronze table at ")
    assert "run ingest_events first" in error
    assert os.path.getsize(report_file) < 4096
