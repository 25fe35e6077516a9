"""Static checks of terraform/: formatting, module wiring, variable validations, policy scan.

No provider can be downloaded here, so nothing runs `terraform validate`; instead the HCL is
parsed and the wiring between environments and modules is checked directly. The parser and
checkov live in the tools venv (`.venv-tools`, built by `make setup` from
terraform/requirements-tools.lock) because checkov's pins conflict with Airflow's, so these
tests shell out to it. `DRIFTLOOP_TOOLS_BIN` points elsewhere if needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TF_ROOT = REPO / "terraform"
TOOLS_BIN = Path(os.environ.get("DRIFTLOOP_TOOLS_BIN", REPO / ".venv-tools" / "bin"))
INVENTORY_SCRIPT = TF_ROOT / "scripts" / "hcl_inventory.py"

MODULES = sorted(p.name for p in (TF_ROOT / "modules").iterdir() if p.is_dir())
ENVIRONMENTS = sorted(p.name for p in (TF_ROOT / "environments").iterdir() if p.is_dir())

MODULE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")
ENVIRONMENT_FILES = ("versions.tf", "main.tf", "variables.tf", "outputs.tf", "terraform.tfvars.example")

# A variable named like a secret must never carry a value in code; variables that only
# *name* a secret (or point at a key by ARN) are fine.
SECRET_NAME = re.compile(r"(password|passwd|secret|token|credential|private_key|access_key|api_key)", re.I)
SECRET_REFERENCE_SUFFIXES = ("_name", "_names", "_arn", "_arns")
# Values that are credentials whatever variable they sit in.
SECRET_VALUE_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "URL with embedded password": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I),
    "password assignment": re.compile(r"(password|passwd|pwd)\s*[=:]\s*\S+", re.I),
}
PINNED_CONSTRAINT = re.compile(r"^\s*(~>\s*\d+\.\d+|=?\s*\d+\.\d+\.\d+\s*$|.*<\s*\d)")
CHECKOV_SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
SETUP_HINT = "run `make setup` (it builds .venv-tools from terraform/requirements-tools.lock)"


# ------------------------------------------------------------------ tools ----


def _tool(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: {SETUP_HINT}, or set DRIFTLOOP_TOOLS_BIN to a bin/ that has {name}.")
    return path


def _terraform_binary() -> str | None:
    for candidate in ("terraform", "tofu"):
        found = shutil.which(candidate)
        if found:
            return found
    fallback = Path("/usr/local/bin/terraform")
    return str(fallback) if fallback.exists() else None


def _terraform_env(tmp: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    if tmp is not None:
        # An empty CLI config: no credentials, no plugin cache, no warning about ~/.terraformrc.
        config = tmp / "terraformrc"
        config.write_text("")
        env["TF_CLI_CONFIG_FILE"] = str(config)
        env["TF_DATA_DIR"] = str(tmp / ".terraform")
    return env


@pytest.fixture(scope="session")
def inventory() -> dict[str, Any]:
    """The parsed Terraform tree (see terraform/scripts/hcl_inventory.py)."""
    python = _tool("python")
    probe = subprocess.run([python, "-c", "import hcl2"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.fail(f"the tools venv at {TOOLS_BIN} cannot import hcl2: {SETUP_HINT}.\n{probe.stderr}")
    result = subprocess.run(
        [python, INVENTORY_SCRIPT, TF_ROOT], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, f"hcl_inventory.py failed:\n{result.stderr}"
    return json.loads(result.stdout)


def _module(inventory: dict[str, Any], name: str) -> dict[str, Any]:
    return inventory[f"modules/{name}"]


def _environment(inventory: dict[str, Any], name: str) -> dict[str, Any]:
    return inventory[f"environments/{name}"]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# ------------------------------------------------------------- formatting ----


def test_terraform_fmt(tmp_path: Path) -> None:
    binary = _terraform_binary()
    if binary is None:
        pytest.skip("no terraform (or tofu) binary on this machine; `terraform fmt -check` needs one")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", "-no-color", str(TF_ROOT)],
        capture_output=True,
        text=True,
        check=False,
        env=_terraform_env(tmp_path),
        timeout=120,
    )
    assert result.returncode == 0, (
        f"terraform fmt found unformatted files (run `terraform fmt -recursive terraform/`):\n"
        f"{result.stdout}{result.stderr}"
    )


# ------------------------------------------------------------- structure ----


@pytest.mark.parametrize("module", MODULES)
def test_module_has_standard_structure(module: str) -> None:
    missing = [f for f in MODULE_FILES if not (TF_ROOT / "modules" / module / f).is_file()]
    assert not missing, f"modules/{module} lacks {missing}"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_has_standard_structure(environment: str) -> None:
    missing = [f for f in ENVIRONMENT_FILES if not (TF_ROOT / "environments" / environment / f).is_file()]
    assert not missing, f"environments/{environment} lacks {missing}"


def test_expected_modules_and_environments_exist() -> None:
    assert set(MODULES) >= {"object-store", "k8s-namespaces", "airflow", "mlflow", "serving-gateway"}
    assert set(ENVIRONMENTS) >= {"dev", "prod"}


# -------------------------------------------------- variables and outputs ----


def test_every_variable_is_typed_and_described(inventory: dict[str, Any]) -> None:
    problems = []
    for directory, info in inventory.items():
        for name, var in info["variables"].items():
            if not var["type"]:
                problems.append(f"{directory}: variable {name} has no type")
            description = (var["description"] or "").strip()
            if len(description) < 10:
                problems.append(f"{directory}: variable {name} has no real description")
    assert not problems, "\n".join(problems)


def test_every_output_is_described(inventory: dict[str, Any]) -> None:
    problems = [
        f"{directory}: output {name} has no description"
        for directory, info in inventory.items()
        for name, out in info["outputs"].items()
        if len((out["description"] or "").strip()) < 10
    ]
    assert not problems, "\n".join(problems)


def test_references_are_declared(inventory: dict[str, Any]) -> None:
    """A stand-in for `terraform validate`: no var.X or local.X without a declaration."""
    problems = []
    for directory, info in inventory.items():
        for name in set(info["var_refs"]) - set(info["variables"]):
            problems.append(f"{directory}: var.{name} is used but not declared")
        for name in set(info["local_refs"]) - set(info["locals"]):
            problems.append(f"{directory}: local.{name} is used but not declared")
    assert not problems, "\n".join(problems)


def test_every_declared_variable_is_used(inventory: dict[str, Any]) -> None:
    """A variable nothing reads is a promise the code does not keep."""
    problems = [
        f"{directory}: variable {name} is declared but never used"
        for directory, info in inventory.items()
        for name in set(info["variables"]) - set(info["var_refs"])
    ]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------- providers ----


def test_every_directory_pins_terraform_and_its_providers(inventory: dict[str, Any]) -> None:
    problems = []
    for directory, info in inventory.items():
        if directory.startswith("scripts"):
            continue
        providers = info["required_providers"]
        if not providers:
            problems.append(f"{directory}: no required_providers block")
        if not info["required_version"]:
            problems.append(f"{directory}: no required_version")
        for name, spec in providers.items():
            if spec.get("file") != "versions.tf":
                problems.append(f"{directory}: provider {name} is declared outside versions.tf")
            if not re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+", spec.get("source", "")):
                problems.append(f"{directory}: provider {name} has no namespace/name source")
            if not PINNED_CONSTRAINT.match(spec.get("version", "")):
                problems.append(f"{directory}: provider {name} version {spec.get('version')!r} is not pinned")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", MODULES)
def test_module_declares_every_provider_it_uses(inventory: dict[str, Any], module: str) -> None:
    info = _module(inventory, module)
    used = {address.split("_", 1)[0] for address in info["resources"] + info["data_sources"]}
    used.discard("terraform")  # terraform_data is built in
    undeclared = used - set(info["required_providers"])
    assert not undeclared, f"modules/{module} uses providers {undeclared} missing from required_providers"


def test_environments_agree_on_provider_versions(inventory: dict[str, Any]) -> None:
    versions = {env: _environment(inventory, env)["required_providers"] for env in ENVIRONMENTS}
    reference = {n: s["version"] for n, s in versions[ENVIRONMENTS[0]].items()}
    for env, providers in versions.items():
        assert {n: s["version"] for n, s in providers.items()} == reference, (
            f"environments/{env} pins different provider versions than {ENVIRONMENTS[0]}"
        )


# ---------------------------------------------------------------- wiring ----


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_module_calls_provide_every_required_input_and_no_unknown_one(
    inventory: dict[str, Any], environment: str
) -> None:
    env = _environment(inventory, environment)
    assert env["module_calls"], f"environments/{environment} calls no module"
    problems = []
    for call, spec in env["module_calls"].items():
        target = spec["resolved"]
        if target is None or target not in inventory or not target.startswith("modules/"):
            problems.append(
                f"module {call}: source {spec['source']!r} is not a module under terraform/modules"
            )
            continue
        variables = inventory[target]["variables"]
        required = {name for name, var in variables.items() if var["required"]}
        missing = required - set(spec["inputs"])
        unknown = set(spec["inputs"]) - set(variables)
        if missing:
            problems.append(f"module {call} ({target}) misses required inputs {sorted(missing)}")
        if unknown:
            problems.append(f"module {call} ({target}) passes unknown inputs {sorted(unknown)}")
    assert not problems, f"environments/{environment}:\n" + "\n".join(problems)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_referenced_module_outputs_exist(inventory: dict[str, Any], environment: str) -> None:
    env = _environment(inventory, environment)
    assert env["module_output_refs"], f"environments/{environment} consumes no module output"
    problems = []
    for ref in env["module_output_refs"]:
        call, output = ref.split(".", 1)
        spec = env["module_calls"].get(call)
        if spec is None:
            problems.append(f"module.{ref}: there is no module {call!r}")
        elif output not in inventory[spec["resolved"]]["outputs"]:
            problems.append(f"module.{ref}: {spec['resolved']} has no output {output!r}")
    assert not problems, f"environments/{environment}:\n" + "\n".join(problems)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_composes_every_module(inventory: dict[str, Any], environment: str) -> None:
    used = {spec["resolved"] for spec in _environment(inventory, environment)["module_calls"].values()}
    assert used == {f"modules/{m}" for m in MODULES}


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_tfvars_example_matches_the_variables(inventory: dict[str, Any], environment: str) -> None:
    env = _environment(inventory, environment)
    example = env["tfvars_examples"]["terraform.tfvars.example"]
    unknown = set(example) - set(env["variables"])
    required = {name for name, var in env["variables"].items() if var["required"]}
    assert not unknown, f"terraform.tfvars.example sets undeclared variables {sorted(unknown)}"
    assert required <= set(example), (
        f"terraform.tfvars.example omits required {sorted(required - set(example))}"
    )


# --------------------------------------------------------------- secrets ----


def test_no_variable_default_holds_a_secret(inventory: dict[str, Any]) -> None:
    problems = []
    for directory, info in inventory.items():
        for name, var in info["variables"].items():
            if SECRET_NAME.search(name) and not name.endswith(SECRET_REFERENCE_SUFFIXES):
                if var["default"] is not None:
                    problems.append(f"{directory}: secret-like variable {name} has a default")
                if not var["sensitive"]:
                    problems.append(f"{directory}: secret-like variable {name} is not sensitive")
            for text in _strings(var["default"]):
                for what, pattern in SECRET_VALUE_PATTERNS.items():
                    if pattern.search(text):
                        problems.append(f"{directory}: default of {name} contains a {what}")
    assert not problems, "\n".join(problems)


def test_no_literal_secret_in_module_calls_or_examples(inventory: dict[str, Any]) -> None:
    problems = []
    for directory, info in inventory.items():
        values = [spec["inputs"] for spec in info["module_calls"].values()]
        values += list(info["tfvars_examples"].values())
        for text in _strings(values):
            for what, pattern in SECRET_VALUE_PATTERNS.items():
                if pattern.search(text):
                    problems.append(f"{directory}: {what} in {text[:60]!r}")
    assert not problems, "\n".join(problems)


def test_example_images_are_pinned(inventory: dict[str, Any]) -> None:
    for env in ENVIRONMENTS:
        example = _environment(inventory, env)["tfvars_examples"]["terraform.tfvars.example"]
        for key in ("airflow_image", "mlflow_image", "serving_image", "spark_job_image"):
            tag = example[key]["tag"]
            assert tag, f"{env}: {key} has no tag"
            assert tag.split("@")[0].lower() != "latest", f"{env}: {key} tag {tag!r} is not pinned"


# --------------------------------------------------------- traffic split ----


def _manifests(path: Path) -> dict[str, dict[str, Any]]:
    """The kubernetes_manifest resources of one .tf file: name → manifest."""
    resources = _hcl(path).get("resource", [])
    return {n: b["manifest"][0] for r in resources for n, b in r.get("kubernetes_manifest", {}).items()}


def test_terraform_leaves_the_route_and_its_weights_to_the_rollout(inventory: dict[str, Any]) -> None:
    """The deploy target creates and re-weights the HTTPRoute; Terraform must not write it at all.

    Its spec lists are atomic under server-side apply, so a Terraform-managed route is written
    whole (weights included) on every apply that touches it: a canary at 50% went back to the
    baseline, and the route named a canary Service that exists only during a rollout.
    """
    files = [p for p in TF_ROOT.rglob("*.tf") if ".terraform" not in p.parts]
    kinds = {
        f"{path.relative_to(TF_ROOT)}: {name}": manifest["kind"]
        for path in files
        if "kubernetes_manifest" in path.read_text()
        for name, manifest in _manifests(path).items()
    }
    assert "Gateway" in kinds.values(), f"no Gateway found among {kinds}: is the parse right?"
    assert "HTTPRoute" not in kinds.values(), f"Terraform manages an HTTPRoute: {kinds}"
    weights = [
        f"{directory}: {name}"
        for directory, info in inventory.items()
        for name in info["variables"]
        if "weight" in name
    ]
    assert not weights, f"variables that promise a traffic split Terraform no longer sets: {weights}"
    # a state holding the route from the module's earlier version forgets it, never deletes it
    removed = _hcl(TF_ROOT / "modules" / "serving-gateway" / "main.tf")["removed"]
    assert {"from": ["${kubernetes_manifest.model_route}"], "lifecycle": [{"destroy": [False]}]} in removed


# The validations themselves, run by Terraform: a root module holding only a module's
# variables.tf needs no provider, so `terraform plan` evaluates them offline.
VALIDATION_CASES = [
    ("serving-gateway", {"listener": {"name": "models-https", "tls_secret_name": "model-tls"}}, None),
    ("serving-gateway", {"listener": {"protocol": "HTTPS"}}, "needs listener.tls_secret_name"),
    # the deploy target names the listener as its route's sectionName (a DNS subdomain)
    ("serving-gateway", {"listener": {"name": "HTTPS_1", "tls_secret_name": "t"}}, "lowercase DNS subdomain"),
    ("airflow", {"image_tag": "latest"}, 'other than "latest"'),
    ("airflow", {"chart_version": "~> 1.22"}, "exact version"),
    ("mlflow", {"image_tag": "latest"}, 'other than "latest"'),
    ("mlflow", {"allowed_hosts": ["*"]}, "must not contain"),
    ("mlflow", {"extra_env": {"DB_PASSWORD": "x"}}, "must not carry secrets"),
    ("airflow", {"extra_env": {"DRIFTLOOP_REGISTRY_LOCK_DSN_PASSWORD": "x"}}, "must not carry secrets"),
    # names a Secret, holds none: the environments pass it
    ("airflow", {"extra_env": {"DRIFTLOOP_SPARK_JOB__S3_CREDENTIALS_SECRET": ""}}, None),
    (
        "airflow",
        {"env_value_from": {"NOT-A-NAME": {"secret_name": "s", "key": "k"}}},
        "environment variable names",
    ),
    (
        "airflow",
        {"env_value_from": {"X": {"secret_name": "Bad_Name", "key": "k"}}},
        "valid Secret name and key",
    ),
    ("k8s-namespaces", {"prometheus": {"namespace": "monitoring"}}, None),
    ("k8s-namespaces", {"prometheus": {"namespace": "monitoring", "port": 0}}, "valid TCP port"),
    ("k8s-namespaces", {"prometheus": {"namespace": "Monitoring"}}, "DNS-1123 label"),
    ("object-store", {"name_prefix": "Bad_Name"}, "lowercase"),
    ("k8s-namespaces", {"kube_api_cidrs": ["not-a-cidr"]}, "valid CIDRs"),
]

# Values that satisfy every required variable of each module, so a case only trips the
# validation it is about.
VALID_INPUTS: dict[str, dict[str, Any]] = {
    "serving-gateway": {
        "namespace": "serving",
        "gateway_class_name": "eg",
        "listener": {"tls_secret_name": "model-tls"},
    },
    "airflow": {
        "namespace": "airflow",
        "chart_version": "1.22.0",
        "airflow_version": "3.3.2",
        "image_repository": "registry.example.com/driftloop-airflow",
        "image_tag": "0.1.0",
        "metadata_secret_name": "airflow-metadata",
        "fernet_key_secret_name": "airflow-fernet-key",
        "api_secret_key_secret_name": "airflow-api-secret-key",
        "jwt_secret_name": "airflow-jwt-secret",
    },
    "mlflow": {
        "namespace": "mlflow",
        "image_repository": "registry.example.com/mlflow",
        "image_tag": "3.6.0",
        "service_account_name": "mlflow",
        "backend_store_secret_name": "mlflow-backend-store",
        "artifacts_destination": "s3://acme-driftloop-dev-mlflow-artifacts/mlflow",
    },
    "object-store": {"name_prefix": "acme-driftloop-dev"},
    "k8s-namespaces": {
        "airflow_worker_service_account": "airflow-worker",
        "resource_quotas": {
            role: {
                "requests_cpu": "1",
                "requests_memory": "1Gi",
                "limits_cpu": "2",
                "limits_memory": "2Gi",
                "pods": 5,
            }
            for role in ("airflow", "mlflow", "serving", "spark_jobs")
        },
        "kube_api_cidrs": ["10.0.0.0/16"],
        "postgres_cidrs": ["10.0.1.0/24"],
        "https_egress_cidrs": ["0.0.0.0/0"],
    },
}


@pytest.fixture(scope="module")
def terraform_binary() -> str:
    binary = _terraform_binary()
    if binary is None:
        pytest.skip("no terraform (or tofu) binary on this machine to evaluate variable validations")
    return binary


def _run(binary: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *args, "-no-color"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )


def _scratch_root(
    tmp_path: Path, module: str, inputs: dict[str, Any], directory: Path | None = None
) -> tuple[Path, dict[str, str]]:
    """A provider-free root module holding a module's (or ``directory``'s) variables.tf and inputs."""
    work = tmp_path / "root"
    work.mkdir()
    source = directory or TF_ROOT / "modules" / module
    shutil.copy(source / "variables.tf", work / "variables.tf")
    (work / "inputs.auto.tfvars.json").write_text(json.dumps(inputs))
    return work, _terraform_env(tmp_path)


@pytest.mark.parametrize(("module", "overrides", "expected_error"), VALIDATION_CASES)
def test_variable_validation_behaviour(
    terraform_binary: str, tmp_path: Path, module: str, overrides: dict[str, Any], expected_error: str | None
) -> None:
    work, env = _scratch_root(tmp_path, module, VALID_INPUTS[module] | overrides)
    _assert_plan(terraform_binary, work, env, expected_error, f"{module}: {overrides}")


def _assert_plan(binary: str, work: Path, env: dict[str, str], expected_error: str | None, what: str) -> None:
    """Plan the scratch root: it must succeed, or fail with ``expected_error`` in its output."""
    init = _run(binary, ["init", "-input=false", "-backend=false"], work, env)
    assert init.returncode == 0, init.stdout + init.stderr
    plan = _run(binary, ["plan", "-input=false", "-lock=false", "-refresh=false"], work, env)
    output = re.sub(r"\s+", " ", plan.stdout + plan.stderr)
    if expected_error is None:
        assert plan.returncode == 0, output
    else:
        assert plan.returncode != 0, f"{what} was accepted"
        assert expected_error in output, output


def _evaluate_locals(
    binary: str,
    tmp_path: Path,
    inventory: dict[str, Any],
    module: str,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a module's locals with real Terraform, offline.

    The locals of every module depend on its variables only, so its locals blocks plus its
    variables.tf form a root module that needs no provider; applying it (nothing to create)
    and reading one output per local shows what the module would hand to its resources:
    the Helm values, the server arguments, the Gateway listener.
    """
    if module.startswith("environments/"):
        # an environment's own locals, fed its terraform.tfvars.example
        directory = TF_ROOT / module
        info = inventory[module]
        inputs = info["tfvars_examples"]["terraform.tfvars.example"] | (overrides or {})
    else:
        directory = TF_ROOT / "modules" / module
        info = _module(inventory, module)
        inputs = VALID_INPUTS[module] | (overrides or {})
    work, env = _scratch_root(tmp_path, module, inputs, directory)
    blocks = []
    for block in info["locals_blocks"]:
        lines = (directory / block["file"]).read_text().splitlines()
        blocks.append("\n".join(lines[block["start_line"] - 1 : block["end_line"]]))
    (work / "locals.tf").write_text("\n\n".join(blocks) + "\n")
    (work / "outputs.tf").write_text(
        "".join(f'output "{name}" {{\n  value = local.{name}\n}}\n' for name in info["locals"])
    )
    for args in (
        ["init", "-input=false", "-backend=false"],
        ["apply", "-input=false", "-auto-approve", "-lock=false"],
    ):
        result = _run(binary, args, work, env)
        assert result.returncode == 0, (
            f"{module}: terraform {args[0]} failed:\n{result.stdout}{result.stderr}"
        )
    result = _run(binary, ["output", "-json"], work, env)
    assert result.returncode == 0, result.stderr
    return {name: out["value"] for name, out in json.loads(result.stdout).items()}


def test_airflow_helm_values(terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]) -> None:
    irsa = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/driftloop-airflow"}
    values = _evaluate_locals(
        terraform_binary,
        tmp_path,
        inventory,
        "airflow",
        {
            "service_account_annotations": irsa,
            "extra_env": {"DRIFTLOOP_PROFILE": "kubernetes"},
            "env_value_from": {
                "DRIFTLOOP_REGISTRY_LOCK_DSN": {
                    "secret_name": "driftloop-airflow",
                    "key": "registry-lock-dsn",
                },
                "DRIFTLOOP_OPTUNA_STORAGE": {"secret_name": "driftloop-airflow", "key": "optuna-storage"},
            },
        },
    )["values"]
    assert values["executor"] == "KubernetesExecutor"
    assert values["images"]["airflow"] == {
        "repository": "registry.example.com/driftloop-airflow",
        "tag": "0.1.0",
        "pullPolicy": "IfNotPresent",
    }
    assert values["images"]["pod_template"]["tag"] == "0.1.0"
    # External PostgreSQL through an existing Secret; no bundled DB, no connection in values.
    assert values["postgresql"]["enabled"] is False
    assert values["data"] == {"metadataSecretName": "airflow-metadata"}
    assert values["fernetKeySecretName"] == "airflow-fernet-key"
    assert values["apiSecretKeySecretName"] == "airflow-api-secret-key"
    assert values["jwtSecretName"] == "airflow-jwt-secret"
    assert values["createUserJob"]["defaultUser"]["enabled"] is False
    # Airflow 3 components, each with the workload-identity annotation.
    assert values["dagProcessor"]["enabled"] is True
    assert values["triggerer"]["enabled"] is True
    for component in ("scheduler", "apiServer", "dagProcessor", "triggerer", "workers"):
        assert values[component]["serviceAccount"]["annotations"] == irsa, component
    assert values["env"] == [{"name": "DRIFTLOOP_PROFILE", "value": "kubernetes"}]
    # the chart's `secret` list: a secretKeyRef in every container and the task pods' template;
    # the async metadata URL too, or Airflow would derive an asyncpg one (not in the image)
    assert values["secret"] == [
        {
            "envName": "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
            "secretName": "airflow-metadata",
            "secretKey": "connection",
        },
        {
            "envName": "DRIFTLOOP_OPTUNA_STORAGE",
            "secretName": "driftloop-airflow",
            "secretKey": "optuna-storage",
        },
        {
            "envName": "DRIFTLOOP_REGISTRY_LOCK_DSN",
            "secretName": "driftloop-airflow",
            "secretKey": "registry-lock-dsn",
        },
    ]
    assert values["config"]["logging"] == {}
    assert values["securityContexts"]["containers"]["allowPrivilegeEscalation"] is False
    rendered = json.dumps(values).lower()
    assert "password" not in rendered
    assert "metadataconnection" not in rendered


def test_airflow_remote_logging(terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]) -> None:
    values = _evaluate_locals(
        terraform_binary,
        tmp_path,
        inventory,
        "airflow",
        {"remote_base_log_folder": "s3://acme-driftloop-dev-reports/airflow-logs"},
    )["values"]
    assert values["config"]["logging"]["remote_logging"] == "True"
    assert (
        values["config"]["logging"]["remote_base_log_folder"]
        == "s3://acme-driftloop-dev-reports/airflow-logs"
    )


@pytest.mark.parametrize("serve_artifacts", [True, False])
def test_mlflow_server_arguments(
    terraform_binary: str, tmp_path: Path, inventory: dict[str, Any], serve_artifacts: bool
) -> None:
    args = _evaluate_locals(
        terraform_binary,
        tmp_path,
        inventory,
        "mlflow",
        {"serve_artifacts": serve_artifacts, "allowed_hosts": ["mlflow.example.com"]},
    )["server_args"]
    options = dict(zip(args[1::2], args[2::2], strict=False)) | {
        a: "" for a in args if a.endswith("serve-artifacts")
    }
    assert args[0] == "server"
    assert options["--backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert {"localhost", "mlflow.mlflow.svc.cluster.local:5000", "mlflow.example.com"} <= set(hosts)
    artifacts = "s3://acme-driftloop-dev-mlflow-artifacts/mlflow"
    if serve_artifacts:
        assert "--serve-artifacts" in args
        assert args[args.index("--artifacts-destination") + 1] == artifacts
    else:
        assert "--no-serve-artifacts" in args
        assert args[args.index("--default-artifact-root") + 1] == artifacts


def test_gateway_listener_terminates_tls(
    terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]
) -> None:
    listener = _evaluate_locals(terraform_binary, tmp_path, inventory, "serving-gateway")["listener"]
    assert listener["protocol"] == "HTTPS"
    assert listener["port"] == 443
    assert listener["tls"] == {
        "mode": "Terminate",
        "certificateRefs": [{"kind": "Secret", "name": "model-tls"}],
    }
    assert listener["allowedRoutes"] == {"namespaces": {"from": "Same"}}


def test_gateway_plain_http_listener(
    terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]
) -> None:
    evaluated = _evaluate_locals(
        terraform_binary,
        tmp_path,
        inventory,
        "serving-gateway",
        {"listener": {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "model.example.com"}},
    )
    assert "tls" not in evaluated["listener"]
    assert evaluated["listener"]["hostname"] == "model.example.com"


def test_network_flows(terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]) -> None:
    evaluated = _evaluate_locals(
        terraform_binary,
        tmp_path,
        inventory,
        "k8s-namespaces",
        {"gateway_dataplane_namespaces": ["envoy-gateway-system"]},
    )
    ingress = evaluated["namespace_ingress"]
    assert ingress["mlflow"] == [
        {"namespaces": ["airflow", "spark-jobs", "serving"], "pod_labels": {}, "port": 5000}
    ]
    assert ingress["serving"] == [
        {"namespaces": ["airflow", "envoy-gateway-system"], "pod_labels": {}, "port": 3000}
    ]
    assert ingress["spark_jobs"] == []
    # no Prometheus given: no flow to or from one
    assert evaluated["prometheus_api"] == evaluated["prometheus_scrape"] == []
    assert [r["port"] for r in evaluated["namespace_egress"]["airflow"]] == [5000, 3000]
    postgres = [r for rules in evaluated["cidr_egress"].values() for r in rules if r["name"] == "postgres"]
    assert {tuple(r["cidrs"]) for r in postgres} == {("10.0.1.0/24",)}
    assert "postgres" not in {r["name"] for r in evaluated["cidr_egress"]["serving"]}


PROMETHEUS = {"namespace": "monitoring", "pod_labels": {"app.kubernetes.io/name": "prometheus"}}


def test_prometheus_flows(terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]) -> None:
    """Airflow's pods reach Prometheus's API (canary analysis); Prometheus scrapes the serving pods."""
    evaluated = _evaluate_locals(
        terraform_binary, tmp_path, inventory, "k8s-namespaces", {"prometheus": PROMETHEUS}
    )
    prometheus = {"namespaces": ["monitoring"], "pod_labels": {"app.kubernetes.io/name": "prometheus"}}
    assert prometheus | {"port": 9090} in evaluated["namespace_egress"]["airflow"]
    # the serving pods' metrics are on their serving port (BentoML's /metrics)
    assert prometheus | {"port": 3000} in evaluated["namespace_ingress"]["serving"]
    # nothing else gains a Prometheus flow
    for direction in ("namespace_egress", "namespace_ingress"):
        for role, rules in evaluated[direction].items():
            if (direction, role) not in {("namespace_egress", "airflow"), ("namespace_ingress", "serving")}:
                assert all("monitoring" not in r["namespaces"] for r in rules), (direction, role)


def _hcl(path: Path) -> dict[str, Any]:
    """One .tf file as the HCL parser of the tools venv reads it: blocks are lists of bodies,
    every attribute value is wrapped in a one-element list."""
    script = "import hcl2, json, sys; print(json.dumps(hcl2.load(open(sys.argv[1]))))"
    result = subprocess.run(
        [_tool("python"), "-c", script, path], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_default_deny_stays_in_every_namespace() -> None:
    """The extra flows are allow rules on top of a deny-all policy for every namespace."""
    resources = _hcl(TF_ROOT / "modules" / "k8s-namespaces" / "main.tf")["resource"]
    policies = {
        name: body for r in resources for name, body in r.get("kubernetes_network_policy_v1", {}).items()
    }
    deny = policies["default_deny"]
    assert deny["for_each"] == ["${kubernetes_namespace_v1.this}"]
    (spec,) = deny["spec"]
    assert spec["pod_selector"] == [{}]  # every pod
    assert sorted(spec["policy_types"][0]) == ["Egress", "Ingress"]
    # and no rule: nothing allowed
    assert "ingress" not in spec
    assert "egress" not in spec


def test_object_store_bucket_names(terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]) -> None:
    buckets = _evaluate_locals(terraform_binary, tmp_path, inventory, "object-store")["buckets"]
    assert {k: b["name"] for k, b in buckets.items()} == {
        "lake": "acme-driftloop-dev-lake",
        "artifacts": "acme-driftloop-dev-mlflow-artifacts",
        "reports": "acme-driftloop-dev-reports",
    }
    assert all(len(b["name"]) <= 63 for b in buckets.values())


# ----------------------------------------------------------- policy scan ----


def test_checkov_skips_are_justified_in_place() -> None:
    problems = []
    for path in sorted(TF_ROOT.rglob("*.tf")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = CHECKOV_SKIP.search(line)
            if match and len((match.group(2) or "").strip()) < 30:
                problems.append(
                    f"{path.relative_to(REPO)}:{number}: {match.group(1)} skipped without a reason"
                )
    assert not problems, "\n".join(problems)


def test_checkov_finds_nothing() -> None:
    checkov = _tool("checkov")
    result = subprocess.run(
        [
            checkov,
            "-d",
            str(TF_ROOT),
            "--framework",
            "terraform",
            "--quiet",
            "--compact",
            "-o",
            "json",
            # Offline: no guideline download from the vendor's platform.
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=REPO,
    )
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        output = result.stdout[-2000:] + result.stderr[-2000:]
        pytest.fail(f"checkov printed no JSON (exit {result.returncode}):\n{output}")
    reports = reports if isinstance(reports, list) else [reports]
    failures = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    summary = {k: sum(r.get("summary", {}).get(k, 0) for r in reports) for k in ("passed", "parsing_errors")}
    assert summary["parsing_errors"] == 0, f"checkov could not parse some files:\n{result.stdout[-2000:]}"
    assert summary["passed"] > 0, f"checkov ran no check:\n{result.stderr[-2000:]}"
    assert not failures, (
        "checkov findings (fix them, or skip in place with `#checkov:skip=<ID>:<reason>`):\n"
        + "\n".join(failures)
    )


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_driftloop_variables_passed_to_airflow_are_real_settings(environment: str) -> None:
    """A misspelt DRIFTLOOP_* name (one underscore instead of two) is silently ignored at run time."""
    from driftloop.config import Settings

    text = (TF_ROOT / "environments" / environment / "main.tf").read_text()
    names = set(re.findall(r"^\s*(DRIFTLOOP_[A-Z0-9_]+)\s*=", text, flags=re.MULTILINE))
    assert names, "the Airflow module receives no driftloop settings"
    for name in sorted(names):
        field, _, nested = name.removeprefix("DRIFTLOOP_").lower().partition("__")
        assert field in Settings.model_fields, f"{environment}: {name} is not a driftloop setting"
        if nested:
            model = Settings.model_fields[field].annotation
            assert nested in model.model_fields, f"{environment}: {name} is not a driftloop setting"


# -------------------------------------------- what the environments tell Airflow ----

# The deploy target and the feature-job runner read these; each must name what Terraform
# created, or pods start with defaults that match nothing in the cluster.
AIRFLOW_DEPLOYMENT_ENV = {
    "DRIFTLOOP_SERVING__NAMESPACE": '${module.k8s_namespaces.namespaces["serving"]}',
    "DRIFTLOOP_SERVING__GATEWAY": "${module.serving_gateway.gateway_name}",
    "DRIFTLOOP_SERVING__GATEWAY_NAMESPACE": "${module.serving_gateway.namespace}",
    "DRIFTLOOP_SERVING__GATEWAY_LISTENER": "${module.serving_gateway.listener_name}",
    "DRIFTLOOP_SERVING__HOSTNAME": "${var.serving_hostname}",
    "DRIFTLOOP_SERVING__IMAGE": "${var.serving_image.repository}:${var.serving_image.tag}",
    "DRIFTLOOP_SERVING__PROMETHEUS_URL": "${var.prometheus.url}",
    "DRIFTLOOP_SERVING__SERVICE_ACCOUNT": "${module.k8s_namespaces.serving_service_account_name}",
    "DRIFTLOOP_SERVING__WORKLOAD_IDENTITY": "${tostring(local.serving_workload_identity)}",
    "DRIFTLOOP_SPARK_JOB__IMAGE": "${var.spark_job_image.repository}:${var.spark_job_image.tag}",
    "DRIFTLOOP_SPARK_JOB__NAMESPACE": '${module.k8s_namespaces.namespaces["spark_jobs"]}',
    "DRIFTLOOP_SPARK_JOB__SERVICE_ACCOUNT": "${module.k8s_namespaces.spark_driver_service_account_name}",
}
# Settings that carry a password: from the Secret driftloop_secret_names names, never values.
AIRFLOW_SECRET_ENV = {
    "DRIFTLOOP_REGISTRY_LOCK_DSN": "registry_lock_dsn_key",
    "DRIFTLOOP_OPTUNA_STORAGE": "optuna_storage_key",
}


def test_terraform_names_agree_with_the_deploy_target_defaults(inventory: dict[str, Any]) -> None:
    """One Gateway, one listener, one service account: Terraform's and the settings' defaults."""
    from driftloop.config import ServingSettings

    gateway = _module(inventory, "serving-gateway")["variables"]
    serving = ServingSettings()
    assert gateway["gateway_name"]["default"] == serving.gateway
    resources = _hcl(TF_ROOT / "modules" / "k8s-namespaces" / "main.tf")["resource"]
    accounts = {n: b for r in resources for n, b in r.get("kubernetes_service_account_v1", {}).items()}
    assert accounts["serving"]["metadata"][0]["name"] == [serving.service_account]


def test_rendered_route_attaches_to_the_gateway_listener_terraform_creates(
    terraform_binary: str, tmp_path: Path, inventory: dict[str, Any]
) -> None:
    """The deploy target's route, with the settings' defaults, names exactly the Gateway and the
    listener serving-gateway creates with its defaults (as Terraform itself evaluates them)."""
    from driftloop.config import ServingSettings, Settings
    from driftloop.deploy.kubernetes import ROUTE_SCHEME, render_route

    listener = _evaluate_locals(terraform_binary, tmp_path, inventory, "serving-gateway")["listener"]
    gateway = _manifests(TF_ROOT / "modules" / "serving-gateway" / "main.tf")["gateway"]
    assert gateway["spec"]["listeners"] == ["${local.listener}"]
    assert gateway["metadata"]["name"] == "${var.gateway_name}"
    module = _module(inventory, "serving-gateway")
    terraform_ref = {
        "group": gateway["apiVersion"].split("/")[0],
        "kind": gateway["kind"],
        "name": module["variables"]["gateway_name"]["default"],
        "sectionName": listener["name"],
    }
    # as the environments configure it: the route in the Gateway's own namespace
    settings = Settings(
        profile="kubernetes",
        lake_root="s3a://acme-driftloop-lake/prod",
        serving=ServingSettings(namespace="serving", gateway_namespace="serving"),
    )
    route = render_route(settings, {"stable": 100})
    assert route["spec"]["parentRefs"] == [terraform_ref]
    # and the listener admits it: routes from its own namespace, on the scheme status() reports
    assert listener["allowedRoutes"] == {"namespaces": {"from": "Same"}}
    assert route["metadata"]["namespace"] == settings.serving.gateway_namespace
    assert listener["protocol"].lower() == ROUTE_SCHEME


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_tells_airflow_what_it_created(inventory: dict[str, Any], environment: str) -> None:
    calls = _environment(inventory, environment)["module_calls"]
    airflow = calls["airflow"]["inputs"]
    extra_env = airflow["extra_env"]
    assert {k: extra_env.get(k) for k in AIRFLOW_DEPLOYMENT_ENV} == AIRFLOW_DEPLOYMENT_ENV
    # the route the deploy target creates lands where the Gateway is and answers its listener's host
    gateway = calls["serving_gateway"]["inputs"]
    assert gateway["namespace"] == extra_env["DRIFTLOOP_SERVING__NAMESPACE"]
    assert gateway["listener"]["hostname"] == extra_env["DRIFTLOOP_SERVING__HOSTNAME"]
    # the Secret-backed settings come by reference only
    assert not set(AIRFLOW_SECRET_ENV) & set(extra_env)
    assert airflow["env_value_from"] == {
        name: {
            "secret_name": "${var.driftloop_secret_names.secret_name}",
            "key": f"${{var.driftloop_secret_names.{key}}}",
        }
        for name, key in AIRFLOW_SECRET_ENV.items()
    }
    # the serving service account's workload identity is the one the flag reports
    namespaces = calls["k8s_namespaces"]["inputs"]
    assert (
        namespaces["service_account_annotations"]["serving"] == "${local.serving_service_account_annotations}"
    )
    assert namespaces["prometheus"] == {
        "namespace": "${var.prometheus.namespace}",
        "pod_labels": "${var.prometheus.pod_labels}",
        "port": "${var.prometheus.port}",
    }


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_env_passes_the_modules_own_checks(
    terraform_binary: str, tmp_path: Path, inventory: dict[str, Any], environment: str
) -> None:
    """The names an environment hands the airflow module must get through its validations."""
    airflow = _environment(inventory, environment)["module_calls"]["airflow"]["inputs"]
    inputs = VALID_INPUTS["airflow"] | {
        "extra_env": {name: "x" for name in airflow["extra_env"]},
        "env_value_from": {
            name: {"secret_name": "driftloop-airflow", "key": "k"} for name in airflow["env_value_from"]
        },
    }
    work, env = _scratch_root(tmp_path, "airflow", inputs)
    _assert_plan(terraform_binary, work, env, None, f"{environment}: airflow inputs")


ENVIRONMENT_VALIDATION_CASES = [
    ({}, None),  # terraform.tfvars.example itself
    ({"serving_image": {"repository": "r.example.com/driftloop-serving", "tag": "latest"}}, "pinned tag"),
    (
        {"spark_job_image": {"repository": "r.example.com/driftloop-spark-job:1", "tag": "0.1.0"}},
        "pinned tag",
    ),
    ({"prometheus": {"url": "prometheus.monitoring:9090", "namespace": "monitoring"}}, "http:// or https://"),
]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize(("overrides", "expected_error"), ENVIRONMENT_VALIDATION_CASES)
def test_environment_variable_validation(
    terraform_binary: str,
    tmp_path: Path,
    inventory: dict[str, Any],
    environment: str,
    overrides: dict[str, Any],
    expected_error: str | None,
) -> None:
    example = _environment(inventory, environment)["tfvars_examples"]["terraform.tfvars.example"]
    work, env = _scratch_root(tmp_path, "", example | overrides, TF_ROOT / "environments" / environment)
    _assert_plan(terraform_binary, work, env, expected_error, f"{environment}: {overrides}")


IRSA = "eks.amazonaws.com/role-arn"


@pytest.mark.parametrize(
    ("overrides", "annotations", "workload_identity"),
    [
        ({}, {IRSA: "arn:aws:iam::123456789012:role/driftloop-{env}-serving"}, True),
        # no serving role: the static-credentials path (S3 keys from the driftloop-serving Secret)
        ({"iam_role_arns": {"serving": None}}, {}, False),
        (
            {
                "iam_role_arns": {"serving": None},
                "serving_service_account_annotations": {IRSA: "arn:aws:iam::123456789012:role/other"},
            },
            {IRSA: "arn:aws:iam::123456789012:role/other"},
            True,
        ),
    ],
)
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_serving_workload_identity_follows_its_service_account(
    terraform_binary: str,
    tmp_path: Path,
    inventory: dict[str, Any],
    environment: str,
    overrides: dict[str, Any],
    annotations: dict[str, str],
    workload_identity: bool,
) -> None:
    example = _environment(inventory, environment)["tfvars_examples"]["terraform.tfvars.example"]
    if "iam_role_arns" in overrides:
        overrides = overrides | {"iam_role_arns": example["iam_role_arns"] | overrides["iam_role_arns"]}
    evaluated = _evaluate_locals(
        terraform_binary, tmp_path, inventory, f"environments/{environment}", overrides
    )
    expected = {k: v.format(env=environment) for k, v in annotations.items()}
    assert evaluated["serving_service_account_annotations"] == expected
    assert evaluated["serving_workload_identity"] is workload_identity


def test_database_urls_name_the_driver_the_images_carry() -> None:
    """The lock (and so every image) has psycopg 3 only: a psycopg2 URL fails at connect time."""
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^psycopg==", lock, flags=re.MULTILINE)
    assert not re.search(r"^(psycopg2|psycopg2-binary|asyncpg)==", lock, flags=re.MULTILINE)
    documents = [
        p
        for pattern in ("*.tf", "*.md", "*.example")
        for p in TF_ROOT.rglob(pattern)
        if ".terraform" not in p.parts
    ]
    documents += [REPO / "README.md", *(REPO / "docker").rglob("*.yaml")]
    problems = []
    for path in documents:
        for match in re.finditer(r"\bpostgres(?:ql)?(\+[a-z0-9]+)?://", path.read_text()):
            if match.group(1) != "+psycopg":
                problems.append(f"{path.relative_to(REPO)}: {match.group(0)} (use postgresql+psycopg://)")
    assert documents
    assert not problems, "\n".join(problems)
