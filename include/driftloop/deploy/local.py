"""The ``local`` deploy target: stable and canary servers as processes on loopback behind HAProxy.

Its state (servers, versions, weights, the splitter's port) lives in a JSON file under
``<data_dir>/serving`` behind a file lock, so separate processes (Airflow tasks) share one deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
from filelock import FileLock, Timeout
from prometheus_client.parser import text_string_to_metric_families

from driftloop.config import Settings
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
from driftloop.deploy.haproxy import Server, Splitter, SplitterConfig, server_name
from driftloop.processes import free_port, log_tail

STATE_VERSION = 2  # 2: one HAProxy splitter (1 was two nginx masters)
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
SERVER_READY_TIMEOUT_S = 180.0  # a server loads its model from the registry before it is ready
PROBE_TIMEOUT_S = 2.0
LOCK_TIMEOUT_S = 600.0  # one deploy (server start + drain of the old one) holds the lock this long at most

Handle = dict[str, Any]  # a ServerHandle as JSON: pid, port, url, variant, model_version, log_path


class ServerLauncher(Protocol):
    """Starts and stops one model server; handles are JSON objects so any process can stop them."""

    def start(self, settings: Settings, variant: Variant, model_version: str, port: int) -> Handle:
        """Start serving ``model_version`` as ``variant`` on ``port`` of settings.serving.host."""
        ...

    def stop(self, handle: Handle) -> None:
        """Stop the server ``handle`` names (a no-op when it is gone)."""
        ...


class BentoLauncher:
    """Runs the BentoML service (serving/) through :mod:`driftloop.servers`."""

    def __init__(self, bento: str | None = None) -> None:
        self.bento = bento

    def start(self, settings: Settings, variant: Variant, model_version: str, port: int) -> Handle:
        from driftloop.servers import start_server

        handle = start_server(settings, variant=variant, model_ref=model_version, port=port, bento=self.bento)
        return handle.as_dict()

    def stop(self, handle: Handle) -> None:
        from driftloop.servers import ServerHandle, stop_server

        stop_server(ServerHandle.from_dict(handle))


@dataclass
class LocalState:
    """What the state file holds: the deployment as every process sees it."""

    canary_weight: int = 0
    splitter_port: int | None = None  # where clients connect (HAProxy), kept once it started
    variants: dict[str, Handle] = field(default_factory=dict)
    # servers replaced or removed, stopped once HAProxy has removed them (or they never took over)
    retiring: list[Handle] = field(default_factory=list)

    def weight(self, variant: str) -> int:
        """The share of traffic ``variant`` gets now (0 when it is not deployed)."""
        if variant not in self.variants:
            return 0
        if variant == "canary":
            return self.canary_weight
        return 100 - self.canary_weight if "canary" in self.variants else 100

    def servers(self) -> tuple[Server, ...]:
        """The splitter's servers: every deployed variant, at its weight (a canary at 0 stays in)."""
        return tuple(
            Server(
                server_name(variant, str(handle["model_version"]), int(handle["port"])),
                int(handle["port"]),
                self.weight(variant),
            )
            for variant in VARIANTS
            if (handle := self.variants.get(variant))
        )

    def to_json(self) -> dict[str, Any]:
        return {"state_version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalState:
        if data.get("state_version") != STATE_VERSION:
            raise DeployError(
                f"local deploy state has version {data.get('state_version')!r}, expected {STATE_VERSION}: "
                "stop the old deployment first; LocalTarget(settings).stop_all() stops what it started "
                "and empties the state (`make demo` does it when it starts)"
            )
        data = {k: v for k, v in data.items() if k != "state_version"}
        return cls(**data)


class LocalTarget(DeployTarget):
    """Stable and canary servers on 127.0.0.1 behind one HAProxy splitting requests by weight.

    Every change keeps traffic flowing: a new server is ready before HAProxy routes to it, weights
    change through HAProxy's runtime API (no reload, so no client connection is closed), and an
    old server stops only once HAProxy has drained it (nothing in flight) and removed it.
    """

    def __init__(self, settings: Settings, launcher: ServerLauncher | None = None) -> None:
        self.settings = settings
        self.launcher: ServerLauncher = launcher or BentoLauncher()
        self.root = settings.data_dir / "serving"
        self.state_path = self.root / "local-target.json"
        self.splitter = Splitter(self.root / "haproxy")
        self._lock = FileLock(str(self.root / "local-target.lock"))

    # --- DeployTarget -----------------------------------------------------------------------------

    def deploy(self, variant: Variant, model_version: str) -> None:
        _check_variant(variant)
        model_version = str(model_version)
        with self._locked() as state:
            current = state.variants.get(variant)
            if current and str(current["model_version"]) == model_version and _ready(current):
                self._apply(state)
                self._retire(state)
                return
            handle = self.launcher.start(self.settings, variant, model_version, free_port())
            handle.setdefault("model_version", model_version)  # the launcher's is the resolved one
            # recorded before it serves: if this process dies now, the next call stops it
            state.retiring.append(handle)
            self._save(state)
            try:
                _wait_ready(handle)
            except DeployError:
                self.launcher.stop(handle)
                state.retiring.remove(handle)
                self._save(state)
                raise
            state.retiring.remove(handle)
            if current:
                state.retiring.append(current)
            state.variants[variant] = handle
            self._save(state)
            self._apply(state)
            self._retire(state)

    def set_canary_weight(self, percent: int) -> None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise DeployError(f"canary weight must be an integer percentage 0..100, got {percent!r}")
        with self._locked() as state:
            if percent > 0 and "canary" not in state.variants:
                raise DeployError(
                    f"cannot send {percent}% of traffic to the canary: none is deployed "
                    "(deploy('canary', version) first)"
                )
            if percent < 100 and "stable" not in state.variants and "canary" in state.variants:
                raise DeployError(
                    f"cannot send {100 - percent}% of traffic to stable: none is deployed "
                    "(deploy('stable', version) first)"
                )
            state.canary_weight = percent
            self._save(state)
            self._apply(state)
            self._retire(state)

    def remove(self, variant: Variant) -> None:
        _check_variant(variant)
        with self._locked() as state:
            handle = state.variants.get(variant)
            if handle is not None:
                weight = state.weight(variant)
                if weight > 0:
                    to_zero = "set_canary_weight(0)" if variant == "canary" else "set_canary_weight(100)"
                    raise DeployError(
                        f"refusing to remove {variant} (version {handle['model_version']}): it still "
                        f"receives {weight}% of traffic; call {to_zero} first"
                    )
                del state.variants[variant]
                state.retiring.append(handle)
                self._save(state)
            self._apply(state)
            self._retire(state)

    def status(self) -> TargetStatus:
        state = self._load()
        variants = {
            variant: VariantStatus(
                variant=variant,  # type: ignore[arg-type]
                model_version=str(handle["model_version"]),
                weight=state.weight(variant),
                ready=_ready(handle),
                endpoint=str(handle["url"]),
            )
            for variant, handle in state.variants.items()
        }
        return TargetStatus(endpoint=self.endpoint, variants=variants)

    def metrics(self, variant: Variant) -> MetricsSnapshot:
        _check_variant(variant)
        handle = self._load().variants.get(variant)
        if handle is None:
            return MetricsSnapshot(variant=variant, model_version=None)
        url = f"{handle['url'].rstrip('/')}{METRICS_PATH}"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError) as error:
            raise DeployError(f"could not scrape {variant} metrics from {url}: {error}") from error
        return parse_metrics(text, variant, str(handle["model_version"]))

    # --- beyond the interface ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Where clients send traffic: the splitter."""
        state = self._load()
        port = state.splitter_port or self.settings.serving.splitter_port
        return f"http://{self.settings.serving.host}:{port}"

    def splitter_running(self) -> bool:
        """HAProxy is up."""
        return self.splitter.pid() is not None

    def stop_all(self) -> None:
        """Stop HAProxy and every server this deployment started; the state is emptied.

        A state file of an older version is stopped as well (its servers are recorded the same
        way; version 1 also ran two nginx masters), so an upgrade starts clean.
        """
        with self._lock_held():
            data = self._read()
            self.splitter.stop()
            _stop_nginx_masters(self.root / "nginx")
            for handle in [*data.get("variants", {}).values(), *data.get("retiring", [])]:
                with contextlib.suppress(Exception):
                    self.launcher.stop(handle)
            self._save(LocalState())

    # --- internals --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock_held(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock.acquire(timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout as error:
            raise DeployError(
                f"another process has held the deploy lock {self._lock.lock_file} for "
                f"{LOCK_TIMEOUT_S:.0f} s; is a deploy stuck?"
            ) from error

    @contextlib.contextmanager
    def _locked(self) -> Iterator[LocalState]:
        with self._lock_held():
            yield self._load()

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise DeployError(f"unreadable deploy state {self.state_path}: {error}") from error

    def _load(self) -> LocalState:
        data = self._read()
        return LocalState.from_json(data) if data else LocalState()

    def _save(self, state: LocalState) -> None:
        # write-then-rename: a reader sees the old state or the new one, never half of one
        self.root.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=self.root, prefix=".local-target.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(state.to_json(), file, indent=2, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.state_path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    def _splitter_config(self, state: LocalState) -> SplitterConfig:
        serving = self.settings.serving
        return SplitterConfig(
            host=serving.host,
            port=state.splitter_port or serving.splitter_port,
            servers=state.servers(),
            max_body_bytes=serving.max_body_bytes,
            server_maxconn=serving.splitter_server_maxconn,
            request_timeout_s=serving.request_timeout_s,
        )

    def _apply(self, state: LocalState) -> None:
        """Make HAProxy route as ``state`` says: started on first use (or after it died), else changed
        through its runtime API; retired servers are drained and removed before this returns."""
        config = self._splitter_config(state)
        if self.splitter.pid() is None:
            if not state.variants:
                return  # started lazily by the first deploy
            self.splitter.start(config)
            state.splitter_port = config.port
            self._save(state)
        else:
            self.splitter.apply(config)

    def _retire(self, state: LocalState) -> None:
        """Stop the servers HAProxy no longer routes to (call only after a successful _apply)."""
        while state.retiring:
            self.launcher.stop(state.retiring[0])
            state.retiring.pop(0)
            self._save(state)


def _stop_nginx_masters(folder: Path) -> None:
    """Stop the two nginx masters a version-1 deployment ran under ``folder`` (front/, weighted/)."""
    for pid_file in folder.glob("*/nginx.pid"):
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            master = psutil.Process(int(pid_file.read_text().strip()))
            # the master's title names its configuration: a recycled pid is left alone
            if str(pid_file.with_name("nginx.conf")) not in " ".join(master.cmdline()):
                continue
            processes = [master, *master.children()]
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            psutil.wait_procs(processes, timeout=5.0)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise DeployError(f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)}")


def _ready(handle: Handle) -> bool:
    url = f"{str(handle['url']).rstrip('/')}{READY_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_ready(handle: Handle, timeout: float = SERVER_READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not _ready(handle):
        what = f"{handle.get('variant')} server (version {handle['model_version']}, pid {handle['pid']})"
        log = Path(str(handle.get("log_path") or ""))
        if not _alive(int(handle["pid"])):
            raise DeployError(f"the {what} exited before it was ready; its log ends with:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise DeployError(
                f"the {what} was not ready on {handle['url']}{READY_PATH} within {timeout:.0f} s; "
                f"its log ends with:\n{log_tail(log)}"
            )
        time.sleep(0.2)


def parse_metrics(text: str, variant: str, model_version: str | None) -> MetricsSnapshot:
    """Sum a server's Prometheus exposition over the series labelled with ``variant``.

    A request is an error when its ``status`` label is a 5xx code (or ``error``): a 4xx is the
    client's fault and says nothing about the model.
    """
    requests = errors = predictions = 0.0
    latency: dict[float, float] = {}
    scores: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("variant", variant) != variant:
                continue
            if sample.name == REQUESTS_TOTAL:
                requests += sample.value
                status = str(labels.get("status", ""))
                if status.startswith("5") or status == "error":
                    errors += sample.value
            elif sample.name == PREDICTIONS_TOTAL:
                predictions += sample.value
            elif sample.name == f"{LATENCY_SECONDS}_bucket":
                bound = float(labels["le"])
                latency[bound] = latency.get(bound, 0.0) + sample.value
            elif sample.name == f"{SCORE}_bucket":
                bound = float(labels["le"])
                scores[bound] = scores.get(bound, 0.0) + sample.value
    return MetricsSnapshot(
        variant=variant,  # type: ignore[arg-type]
        model_version=model_version,
        requests=requests,
        errors=errors,
        predictions=predictions,
        latency_buckets=dict(sorted(latency.items())),
        score_buckets=dict(sorted(scores.items())),
    )
