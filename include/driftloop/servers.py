"""Start and stop one BentoML model server on 127.0.0.1, and build the serving bento.

A server runs detached in its own session (it outlives the process that started it); its
:class:`ServerHandle` is plain JSON so a deploy target can persist it and stop it later.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from driftloop.config import Settings
from driftloop.deploy.base import DeployError, Variant
from driftloop.log import get_logger
from driftloop.processes import LOOPBACK, STOP_TIMEOUT, log_tail

log = get_logger(__name__)

REPO = Path(__file__).resolve().parents[2]
SERVICE = "serving.service:ModelService"
BENTOFILE = REPO / "serving" / "bentofile.yaml"
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class ServerHandle:
    """One running model server, as JSON: enough to reach it, identify it and stop it."""

    pid: int
    port: int
    url: str
    variant: str
    model_version: str
    log_path: str
    bento: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerHandle:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def is_running(self) -> bool:
        """The process exists and is still the server we started (pids are reused)."""
        try:
            process = psutil.Process(self.pid)
            return process.status() != psutil.STATUS_ZOMBIE and "bentoml" in " ".join(process.cmdline())
        except psutil.Error:
            return False


def bentoml_home(settings: Settings) -> Path:
    """BentoML's store, under the data folder and away from the build context (the repo)."""
    return settings.data_dir / "bentoml"


def _server_home(settings: Settings, variant: str, port: int) -> Path:
    """A BENTOML_HOME of the server's own that shares the bento store.

    ``bentoml serve`` wipes ``$BENTOML_HOME/prometheus_multiproc_dir`` at start-up: with one
    home for stable and canary, starting the canary deleted the stable server's metric files
    and its /metrics went blank.
    """
    shared = bentoml_home(settings)
    home = shared / "servers" / f"{variant}-{port}"
    home.mkdir(parents=True, exist_ok=True)
    (shared / "bentos").mkdir(parents=True, exist_ok=True)
    link = home / "bentos"
    if not link.is_symlink():
        link.symlink_to(shared / "bentos", target_is_directory=True)
    return home


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as DRIFTLOOP_* variables, so a child process reads exactly these."""
    env: dict[str, str] = {}

    def put(prefix: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                put(f"{prefix}__{key.upper()}", inner)
        elif isinstance(value, list | tuple):
            env[prefix] = json.dumps(value)
        else:
            env[prefix] = str(value).lower() if isinstance(value, bool) else str(value)

    dumped = settings.model_dump(mode="json")
    for key, value in dumped.items():
        put(f"DRIFTLOOP_{key.upper()}", value)
    env.pop("DRIFTLOOP_SERVING__AUTH_TOKEN", None)  # dumped masked; the real value follows
    if settings.serving.auth_token is not None:
        env["DRIFTLOOP_SERVING__AUTH_TOKEN"] = settings.serving.auth_token.get_secret_value()
    return env


def child_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """This process's environment without stale DRIFTLOOP_* values, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    env.update(settings_env(settings))
    env.update(
        BENTOML_HOME=str(bentoml_home(settings)),
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def resolve_model_version(settings: Settings, model_ref: str) -> str:
    """An alias or version number as a version number, so every worker serves the same one."""
    if model_ref.isdigit():
        return model_ref
    from driftloop.registry import Registry

    version = Registry(settings).alias_version(model_ref)
    if version is None:
        raise DeployError(
            f"registered model {settings.registered_model!r} has no alias {model_ref!r} "
            f"in {settings.tracking_uri}: register a version or pass a version number"
        )
    return str(version.version)


def start_server(
    settings: Settings,
    *,
    variant: Variant,
    model_ref: str,
    port: int,
    bento: str | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> ServerHandle:
    """Run ``bentoml serve`` (the source service, or the built ``bento`` tag) and wait until ready.

    The alias is resolved here, once, and the server is started on the version number. The
    server's output goes to a log file under ``<data_dir>/serving``; on failure the error
    shows its tail.
    """
    import httpx

    version = resolve_model_version(settings, model_ref)
    logs = settings.data_dir / "serving"
    logs.mkdir(parents=True, exist_ok=True)
    bentoml_home(settings).mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{variant}-v{version}-{port}.log"
    target = bento or SERVICE
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        *([] if bento else ["--working-dir", str(REPO)]),
    ]
    env = child_env(
        settings,
        DRIFTLOOP_SERVING__VARIANT=variant,
        DRIFTLOOP_SERVING__MODEL_REF=version,
        BENTOML_HOME=str(_server_home(settings, variant, port)),
    )
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a tree, outlives us
        )
    handle = ServerHandle(
        pid=process.pid,
        port=port,
        url=f"http://{LOOPBACK}:{port}",
        variant=variant,
        model_version=version,
        log_path=str(log_path),
        bento=bento,
    )
    log.info("serving.starting", **handle.as_dict())
    deadline = time.monotonic() + ready_timeout
    problem = f"not ready after {ready_timeout:.0f} s"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                problem = f"exited with code {process.returncode}"
                break
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{handle.url}/readyz").status_code == 200:
                    log.info("serving.ready", **handle.as_dict())
                    return handle
                if client.get(f"{handle.url}/livez").status_code == 503:
                    problem = "could not load its model"
                    break
            time.sleep(0.2)
    stop_server(handle)
    raise DeployError(
        f"model server {variant} (version {version}, port {port}) {problem}; "
        f"log {log_path}:\n{log_tail(log_path, hide=_secrets(settings))}"
    )


def _secrets(settings: Settings) -> tuple[str, ...]:
    token = settings.serving.auth_token
    return (token.get_secret_value(),) if token else ()


def stop_server(handle: ServerHandle, timeout: float = STOP_TIMEOUT) -> None:
    """Stop gracefully (SIGTERM: workers finish requests and flush the prediction log), then kill.

    Works from any process: only the handle's pid is needed. A server already gone is fine.
    """
    try:
        leader = psutil.Process(handle.pid)
        tree = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(handle.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    if alive:
        log.warning("serving.kill_after_timeout", pid=handle.pid, alive=len(alive))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(handle.pid, signal.SIGKILL)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5.0)
    log.info("serving.stopped", pid=handle.pid, variant=handle.variant, model_version=handle.model_version)


def build_bento(settings: Settings) -> str:
    """``bentoml build`` of serving/bentofile.yaml into the data folder's store; the bento tag."""
    bentoml_home(settings).mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE), "-o", "tag", str(REPO)],
        cwd=REPO,
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
    )
    match = re.search(r"__tag__:(\S+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise DeployError(
            f"bentoml build failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return match.group(1)
