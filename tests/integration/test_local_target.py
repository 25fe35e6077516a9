"""The local deploy target on loopback: real nginx, real server processes, real concurrent traffic.

Weights spread requests as configured, reloads and version swaps under load lose nothing, the
state is shared across processes, and a canary with traffic cannot be removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from driftloop.config import Settings, get_settings
from driftloop.deploy.base import DeployError
from driftloop.deploy.local import LocalTarget
from driftloop.deploy.nginx import nginx_binary
from driftloop.processes import free_port

REPO = Path(__file__).resolve().parents[2]

# A minimal model server: answers /predict with who it is (after the delay the body asks for, so
# requests are in flight during reloads), /readyz, and /metrics in the serving processes' names.
TINY_SERVER = textwrap.dedent(
    """
    import json, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    variant, version, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    counts, lock = {}, threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls

        def _send(self, status, body, content_type="application/json"):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/readyz":
                self._send(200, "ok", "text/plain")
            elif self.path == "/metrics":
                with lock:
                    lines = [
                        f'driftloop_requests_total{{model_version="{version}",variant="{variant}",'
                        f'endpoint="/predict",status="{status}"}} {n}'
                        for status, n in counts.items()
                    ]
                self._send(200, "# TYPE driftloop_requests_total counter\\n" + "\\n".join(lines) + "\\n",
                           "text/plain; version=0.0.4")
            else:
                self._send(404, "{}")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            time.sleep(body.get("delay_s", 0))
            with lock:
                counts["200"] = counts.get("200", 0) + 1
            self._send(200, json.dumps({"variant": variant, "model_version": version, "port": port}))

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


class TinyLauncher:
    """Starts TINY_SERVER processes in sessions of their own; any process can stop them by pid.

    A stop is SIGKILL on purpose: a server the target retires must no longer get any traffic, so
    it gets no chance to finish requests it should never have received.
    """

    def start(self, settings: Settings, variant: str, model_version: str, port: int) -> dict[str, Any]:
        log_path = settings.data_dir / f"tiny-{variant}-{model_version}-{port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", TINY_SERVER, variant, model_version, str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return {
            "pid": process.pid,
            "port": port,
            "url": f"http://127.0.0.1:{port}",
            "variant": variant,
            "model_version": model_version,
            "log_path": str(log_path),
        }

    def stop(self, handle: dict[str, Any]) -> None:
        try:
            process = psutil.Process(int(handle["pid"]))
            os.killpg(process.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            return
        psutil.wait_procs([process], timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _nginx_installed() -> None:
    nginx_binary()  # raises with "run `make services`" when nginx is missing


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings with a fresh data folder and a free splitter port, also seen by child processes."""
    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DRIFTLOOP_SERVING__SPLITTER_PORT", str(free_port()))
    get_settings.cache_clear()
    yield Settings()
    get_settings.cache_clear()


@pytest.fixture
def target(local_settings: Settings) -> Iterator[LocalTarget]:
    """A LocalTarget over tiny servers; stops nginx and every server afterwards."""
    deployed = LocalTarget(local_settings, launcher=TinyLauncher())
    try:
        yield deployed
    finally:
        deployed.stop_all()
        assert not deployed.splitter_running()


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.failures)


class Load:
    """Concurrent clients posting through the splitter on keep-alive connections until stopped."""

    def __init__(self, endpoint: str, clients: int = 6) -> None:
        self.endpoint = endpoint
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.endpoint, timeout=30.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json={"amount": 1.0, "delay_s": 0.01})
                except httpx.HTTPError as error:
                    with self._lock:
                        self.result.failures.append(f"{type(error).__name__}: {error}")
                    continue
                with self._lock:
                    self.result.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        body = response.json()
                        self.result.served_by[f"{body['variant']} {body['model_version']}"] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_for(self, requests: int, timeout: float = 60.0) -> None:
        """Let at least ``requests`` more requests complete (so each change happens under load)."""
        start = self.result.total
        deadline = time.monotonic() + timeout
        while self.result.total < start + requests:
            assert time.monotonic() < deadline, "the load generator stalled"
            time.sleep(0.01)


def _share(target: LocalTarget, requests: int) -> Counter[str]:
    served: Counter[str] = Counter()
    with httpx.Client(base_url=target.endpoint, timeout=10.0) as client:
        for _ in range(requests):
            response = client.post("/predict", json={"amount": 1.0})
            assert response.status_code == 200, response.text
            served[response.json()["variant"]] += 1
    return served


def test_requests_spread_according_to_weights(target: LocalTarget) -> None:
    target.deploy("stable", "1")
    target.deploy("canary", "2")
    assert _share(target, 200) == {"stable": 200}  # a deployed canary at weight 0 gets nothing

    target.set_canary_weight(10)
    served = _share(target, 2000)
    # nginx's smooth weighted round-robin: within ±3 percentage points (in practice exact)
    assert abs(served["canary"] / 2000 - 0.10) <= 0.03, served

    target.set_canary_weight(50)
    served = _share(target, 1000)
    assert abs(served["canary"] / 1000 - 0.50) <= 0.03, served

    target.set_canary_weight(100)
    assert _share(target, 200) == {"canary": 200}


def test_weight_changes_and_a_version_swap_under_load_lose_no_request(target: LocalTarget) -> None:
    target.deploy("stable", "1")
    target.deploy("canary", "2")
    with Load(target.endpoint) as load:
        load.wait_for(200)
        for weight in (10, 50, 100, 0):
            target.set_canary_weight(weight)
            load.wait_for(200)
        target.deploy("stable", "3")  # a new server takes over, the old one is killed
        load.wait_for(200)
        target.remove("canary")
        load.wait_for(200)
    result = load.result
    assert result.failures == []
    assert dict(result.statuses) == {200: result.total}
    assert result.total >= 1400
    assert {"stable 1", "canary 2", "stable 3"} <= set(result.served_by)
    status = target.status()
    assert status.variants["stable"].model_version == "3"
    assert "canary" not in status.variants


def test_state_is_shared_with_another_process(target: LocalTarget, local_settings: Settings) -> None:
    target.deploy("stable", "1")
    target.deploy("canary", "2")
    # an Airflow task in another process moves the weight and reads what this one deployed
    script = textwrap.dedent(
        """
        import json
        from driftloop.config import Settings
        from driftloop.deploy.local import LocalTarget
        from tests.integration.test_local_target import TinyLauncher

        other = LocalTarget(Settings(), launcher=TinyLauncher())
        other.set_canary_weight(25)
        status = other.status()
        print(json.dumps({name: [v.model_version, v.weight, v.ready] for name, v in status.variants.items()}))
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert json.loads(output.strip().splitlines()[-1]) == {
        "stable": ["1", 75, True],
        "canary": ["2", 25, True],
    }
    # and a fresh instance here sees the change, with nginx already routing by it
    fresh = LocalTarget(local_settings, launcher=TinyLauncher())
    assert fresh.status().canary_weight == 25
    assert abs(_share(fresh, 400)["canary"] / 400 - 0.25) <= 0.03
    assert fresh.metrics("canary").requests >= 90


def test_remove_refuses_a_canary_that_still_gets_traffic(target: LocalTarget) -> None:
    target.deploy("stable", "1")
    target.deploy("canary", "2")
    target.set_canary_weight(10)
    with pytest.raises(DeployError, match=r"still receives 10% of traffic; call set_canary_weight\(0\)"):
        target.remove("canary")
    assert target.status().variants["canary"].ready

    target.set_canary_weight(0)
    target.remove("canary")
    target.remove("canary")  # a no-op the second time
    assert set(target.status().variants) == {"stable"}


def test_weights_need_the_variants_they_route_to(target: LocalTarget) -> None:
    with pytest.raises(DeployError, match="none is deployed"):
        target.set_canary_weight(10)
    target.set_canary_weight(0)  # nothing to route: allowed, and nginx is not started yet
    assert not target.splitter_running()
    with pytest.raises(DeployError, match="integer percentage"):
        target.set_canary_weight(101)


def test_redeploying_the_same_version_is_a_no_op(target: LocalTarget) -> None:
    target.deploy("stable", "1")
    before = target.status().variants["stable"].endpoint
    target.deploy("stable", "1")
    assert target.status().variants["stable"].endpoint == before


def test_a_dead_splitter_is_restarted_by_the_next_change(target: LocalTarget) -> None:
    target.deploy("stable", "1")
    pid = target.splitter.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=10)
    target.deploy("stable", "1")
    assert target.splitter_running()
    assert _share(target, 10) == {"stable": 10}
