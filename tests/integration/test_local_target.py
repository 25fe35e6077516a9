"""The local deploy target on loopback: real HAProxy, real BentoML servers, real concurrent traffic.

Weights spread requests exactly as configured, weight changes and version swaps under load lose
nothing, the state is shared across processes, and a canary with traffic cannot be removed. The
splitter's own mechanics (kept-alive connections across changes, draining before a server stops,
restarts, retired servers killed outright) run against tiny servers.
"""

from __future__ import annotations

import http.client
import itertools
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
from driftloop.dataset import load_dataset_spec
from driftloop.deploy.base import DeployError
from driftloop.deploy.haproxy import METRICS_PATH, STATUS_PATH, haproxy_binary
from driftloop.deploy.local import LocalTarget
from driftloop.processes import free_port
from tests.models import ModelVersions, model_versions, request_rows  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
ROWS = request_rows(load_dataset_spec(), 100, seed=21)

# A minimal model server: answers /predict with who it is and the request id it got (after the
# delay the body asks for, so requests are in flight during changes), /readyz, and /metrics in the
# serving processes' names.
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
            who = {"variant": variant, "model_version": version, "port": port}
            self._send(200, json.dumps({**who, "request_id": self.headers.get("X-Request-ID")}))

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
def _haproxy_installed() -> None:
    haproxy_binary()  # raises with "run `make services`" when HAProxy is missing


@dataclass(frozen=True)
class BentoDeployment:
    """The shared target and the two registered versions it serves (both answer 200)."""

    target: LocalTarget
    good: str
    garbage: str


@pytest.fixture(scope="module")
def bento(model_versions: ModelVersions, tmp_path_factory) -> Iterator[BentoDeployment]:  # noqa: F811
    """A LocalTarget over real BentoML servers, shared by the module (a server takes 20-60 s to start).

    The environment carries the same settings, so other processes operate the same deployment.
    Stops HAProxy and every server afterwards.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path_factory.mktemp("local-target") / "data"))
        patch.setenv("DRIFTLOOP_MLFLOW_TRACKING_URI", model_versions.settings.tracking_uri)
        patch.setenv("DRIFTLOOP_SERVING__SPLITTER_PORT", str(free_port()))
        get_settings.cache_clear()
        deployed = LocalTarget(Settings())
        try:
            yield BentoDeployment(deployed, model_versions.good, model_versions.garbage)
        finally:
            deployed.stop_all()
            get_settings.cache_clear()
        assert not deployed.splitter_running()


def _stable_and_canary(bento: BentoDeployment, canary_weight: int = 0) -> None:
    """Good version as stable, garbage as canary (deploy is a no-op for a server already running)."""
    bento.target.set_canary_weight(0)
    bento.target.deploy("stable", bento.good)
    bento.target.deploy("canary", bento.garbage)
    bento.target.set_canary_weight(canary_weight)


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings with a fresh data folder and a free splitter port, also seen by child processes."""
    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DRIFTLOOP_SERVING__SPLITTER_PORT", str(free_port()))
    get_settings.cache_clear()
    yield Settings()
    get_settings.cache_clear()


@pytest.fixture
def tiny_target(local_settings: Settings) -> Iterator[LocalTarget]:
    """A LocalTarget over tiny servers; stops HAProxy and every server afterwards."""
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

    def __init__(self, endpoint: str, bodies: list[dict[str, Any]], clients: int = 6) -> None:
        self.endpoint = endpoint
        self.bodies = bodies
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.endpoint, timeout=30.0) as client:
            for i in itertools.count():
                if self._stop.is_set():
                    break
                try:
                    response = client.post("/predict", json=self.bodies[i % len(self.bodies)])
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


def _share(endpoint: str, requests: int) -> Counter[str]:
    """Which variant answered each of ``requests`` sequential predictions through the splitter."""
    served: Counter[str] = Counter()
    with httpx.Client(base_url=endpoint, timeout=10.0) as client:
        for i in range(requests):
            response = client.post("/predict", json=ROWS[i % len(ROWS)])
            assert response.status_code == 200, response.text
            served[response.json()["variant"]] += 1
    return served


# --- real BentoML servers ------------------------------------------------------------------------


@pytest.mark.slow
def test_requests_spread_according_to_weights(bento: BentoDeployment) -> None:
    _stable_and_canary(bento)
    assert _share(bento.target.endpoint, 100) == {"stable": 100}  # a canary at weight 0 gets nothing

    # HAProxy's weighted round-robin is exact per request; a change may shift its phase by one
    bento.target.set_canary_weight(10)
    served = _share(bento.target.endpoint, 2000)
    assert abs(served["canary"] - 200) <= 1, served

    bento.target.set_canary_weight(50)
    served = _share(bento.target.endpoint, 500)
    assert abs(served["canary"] - 250) <= 1, served

    bento.target.set_canary_weight(100)
    assert _share(bento.target.endpoint, 100) == {"canary": 100}

    # what the servers counted agrees with what the clients saw
    status = bento.target.status()
    assert {v.variant: (v.model_version, v.weight, v.ready) for v in status.variants.values()} == {
        "stable": (bento.good, 0, True),
        "canary": (bento.garbage, 100, True),
    }


@pytest.mark.slow
def test_state_is_shared_with_another_process(bento: BentoDeployment) -> None:
    _stable_and_canary(bento)
    before = bento.target.metrics("canary")
    # an Airflow task in another process moves the weight and reads what this one deployed
    script = textwrap.dedent(
        """
        import json
        from driftloop.config import Settings
        from driftloop.deploy.local import LocalTarget

        other = LocalTarget(Settings())
        other.set_canary_weight(25)
        status = other.status()
        print(json.dumps({name: [v.model_version, v.weight, v.ready] for name, v in status.variants.items()}))
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert json.loads(output.strip().splitlines()[-1]) == {
        "stable": [bento.good, 75, True],
        "canary": [bento.garbage, 25, True],
    }
    # a fresh instance here sees the change, with HAProxy already routing by it
    fresh = LocalTarget(Settings())
    assert fresh.status().canary_weight == 25
    assert abs(_share(fresh.endpoint, 400)["canary"] - 100) <= 1
    counted = fresh.metrics("canary").minus(before)
    assert counted.model_version == bento.garbage
    assert (counted.requests, counted.errors, counted.predictions) == (100.0, 0.0, 100.0)


@pytest.mark.slow
def test_remove_refuses_a_canary_that_still_gets_traffic(bento: BentoDeployment) -> None:
    _stable_and_canary(bento, canary_weight=10)
    with pytest.raises(DeployError, match=r"still receives 10% of traffic; call set_canary_weight\(0\)"):
        bento.target.remove("canary")
    assert bento.target.status().variants["canary"].ready
    with pytest.raises(
        DeployError, match=r"stable .* still receives 90% of traffic; call set_canary_weight\(100\)"
    ):
        bento.target.remove("stable")

    bento.target.set_canary_weight(0)
    bento.target.remove("canary")
    bento.target.remove("canary")  # a no-op the second time
    assert set(bento.target.status().variants) == {"stable"}
    assert _share(bento.target.endpoint, 20) == {"stable": 20}


@pytest.mark.slow
def test_weight_changes_and_a_stable_swap_under_load_lose_no_request(bento: BentoDeployment) -> None:
    _stable_and_canary(bento)
    with Load(bento.target.endpoint, ROWS, clients=4) as load:
        load.wait_for(100)
        for weight in (10, 50, 100, 0):
            bento.target.set_canary_weight(weight)
            load.wait_for(100)
        # a new stable server takes over, the old one stops once nothing routes to it
        bento.target.deploy("stable", bento.garbage)
        load.wait_for(100)
        bento.target.remove("canary")
        load.wait_for(100)
    result = load.result
    assert result.failures == []
    assert dict(result.statuses) == {200: result.total}
    assert result.total >= 700
    assert {
        f"stable {bento.good}",
        f"canary {bento.garbage}",
        f"stable {bento.garbage}",
    } <= set(result.served_by)
    status = bento.target.status()
    assert status.variants["stable"].model_version == bento.garbage
    assert "canary" not in status.variants


# --- the splitter's mechanics, over tiny servers -----------------------------------------------


def test_retired_servers_get_no_traffic_even_when_killed_outright(tiny_target: LocalTarget) -> None:
    # TinyLauncher stops with SIGKILL: a request still routed to a retired server would fail, or,
    # replayed by HAProxy on another server, show a retry in the access log
    tiny_target.deploy("stable", "1")
    tiny_target.deploy("canary", "2")
    bodies = [{"delay_s": 0.01}]  # every request is in flight for a while
    with Load(tiny_target.endpoint, bodies) as load:
        load.wait_for(200)
        for weight in (10, 50, 100, 0):
            tiny_target.set_canary_weight(weight)
            load.wait_for(200)
        tiny_target.deploy("stable", "3")
        load.wait_for(200)
        tiny_target.remove("canary")
        load.wait_for(200)
    result = load.result
    assert result.failures == []
    assert dict(result.statuses) == {200: result.total}
    assert {"stable 1", "canary 2", "stable 3"} <= set(result.served_by)
    logged = [
        line for line in tiny_target.splitter.paths.log.read_text().splitlines() if "POST /predict" in line
    ]
    assert len(logged) >= result.total
    assert [line for line in logged if " retries=0 " not in line] == []


def test_weights_need_the_variants_they_route_to(tiny_target: LocalTarget) -> None:
    with pytest.raises(DeployError, match="none is deployed"):
        tiny_target.set_canary_weight(10)
    tiny_target.set_canary_weight(0)  # nothing to route: allowed, and HAProxy is not started yet
    assert not tiny_target.splitter_running()
    with pytest.raises(DeployError, match="integer percentage"):
        tiny_target.set_canary_weight(101)
    tiny_target.deploy("canary", "2")
    with pytest.raises(DeployError, match=r"cannot send 50% of traffic to stable"):
        tiny_target.set_canary_weight(50)


def test_redeploying_the_same_version_is_a_no_op(tiny_target: LocalTarget) -> None:
    tiny_target.deploy("stable", "1")
    before = tiny_target.status().variants["stable"].endpoint
    tiny_target.deploy("stable", "1")
    assert tiny_target.status().variants["stable"].endpoint == before


@pytest.mark.parametrize(
    "change",
    [lambda target: target.deploy("stable", "1"), lambda target: target.set_canary_weight(30)],
    ids=["deploy", "set_canary_weight"],
)
def test_a_killed_splitter_is_restarted_by_the_next_call_with_the_same_weights(
    tiny_target: LocalTarget, change: Any
) -> None:
    tiny_target.deploy("stable", "1")
    tiny_target.deploy("canary", "2")
    tiny_target.set_canary_weight(30)
    pid = tiny_target.splitter.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=10)
    assert not tiny_target.splitter_running()
    change(tiny_target)
    assert tiny_target.splitter_running()
    assert _share(tiny_target.endpoint, 100) == {"stable": 70, "canary": 30}


def test_weight_changes_keep_client_connections_open(tiny_target: LocalTarget) -> None:
    tiny_target.deploy("stable", "1")
    tiny_target.deploy("canary", "2")
    host, port = tiny_target.endpoint.removeprefix("http://").split(":")
    # one kept-alive client connection; http.client neither retries nor reconnects after an error
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    local_ports = set()
    served: Counter[str] = Counter()
    try:
        for weight in (0, 10, 50, 100, 0, 30):
            tiny_target.set_canary_weight(weight)
            for _ in range(20):
                connection.request(
                    "POST", "/predict", body=b"{}", headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                assert response.status == 200
                served[json.loads(response.read())["variant"]] += 1
                local_ports.add(connection.sock.getsockname()[1])
    finally:
        connection.close()
    assert len(local_ports) == 1  # never reconnected
    assert sum(served.values()) == 120
    assert served["stable"] > 0
    assert served["canary"] > 0


def test_an_old_server_stops_only_after_its_requests_in_flight_finished(tiny_target: LocalTarget) -> None:
    tiny_target.deploy("stable", "1")
    old_pid = int(json.loads(tiny_target.state_path.read_text())["variants"]["stable"]["pid"])
    answered: dict[str, Any] = {}

    def slow_request() -> None:
        with httpx.Client(base_url=tiny_target.endpoint, timeout=30) as client:
            response = client.post("/predict", json={"delay_s": 3})
            answered.update(response.json(), status=response.status_code, at=time.monotonic())

    slow = threading.Thread(target=slow_request)
    slow.start()
    deadline = time.monotonic() + 10
    while not any(s.in_flight for s in tiny_target.splitter.servers().values()):
        assert time.monotonic() < deadline, "the slow request never reached the server"
        time.sleep(0.02)
    tiny_target.deploy("stable", "2")  # drains stable 1 before stopping it (a SIGKILL)
    swapped_at = time.monotonic()
    slow.join(timeout=30)
    # answered by the old server itself, not replayed on the new one after a kill
    assert (answered["status"], answered["variant"], answered["model_version"]) == (200, "stable", "1")
    assert answered["at"] <= swapped_at
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    assert _share(tiny_target.endpoint, 10) == {"stable": 10}
    assert [s.name.split("-")[1] for s in tiny_target.splitter.servers().values()] == ["v2"]


def test_the_splitter_answers_for_itself_and_passes_request_ids(tiny_target: LocalTarget) -> None:
    tiny_target.deploy("stable", "1")
    with httpx.Client(base_url=tiny_target.endpoint, timeout=10) as client:
        assert client.post("/predict", json={}, headers={"X-Request-ID": "abc-123"}).json()["request_id"] == (
            "abc-123"
        )
        given = {client.post("/predict", json={}).json()["request_id"] for _ in range(3)}
        given.add(client.post("/predict", json={}, headers={"X-Request-ID": ""}).json()["request_id"])
        assert len(given) == 4
        assert None not in given
        too_large = client.post("/predict", content=b"x" * (tiny_target.settings.serving.max_body_bytes + 1))
        assert too_large.status_code == 413
        assert "request body larger than" in too_large.json()["detail"]
        assert client.get(STATUS_PATH).json() == {"servers": 1}
        assert "haproxy_backend_active_servers" in client.get(METRICS_PATH).text


def test_changes_from_concurrent_processes_are_serialised(tiny_target: LocalTarget) -> None:
    tiny_target.deploy("stable", "1")
    tiny_target.deploy("canary", "2")
    script = textwrap.dedent(
        """
        import sys
        from driftloop.config import Settings
        from driftloop.deploy.local import LocalTarget
        from tests.integration.test_local_target import TinyLauncher

        target = LocalTarget(Settings(), launcher=TinyLauncher())
        for weight in map(int, sys.argv[1:]):
            target.set_canary_weight(weight)
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, *weights], cwd=REPO)
        for weights in (["10", "20", "30", "40"], ["60", "70", "80", "90"])
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    # whichever ran last, HAProxy routes by exactly what the state file says
    state = json.loads(tiny_target.state_path.read_text())
    assert state["canary_weight"] in (40, 90)
    routed = {name.split("-")[0]: server.weight for name, server in tiny_target.splitter.servers().items()}
    assert routed == {"stable": 100 - state["canary_weight"], "canary": state["canary_weight"]}
    assert abs(_share(tiny_target.endpoint, 200)["canary"] - 2 * state["canary_weight"]) <= 1


def test_a_server_left_behind_by_a_crashed_deploy_is_stopped_by_the_next_change(
    tiny_target: LocalTarget, local_settings: Settings
) -> None:
    tiny_target.deploy("stable", "1")
    # a deploy that died after starting its server but before the swap leaves it in `retiring`
    orphan = TinyLauncher().start(local_settings, "stable", "2", free_port())
    state = json.loads(tiny_target.state_path.read_text())
    state["retiring"].append(orphan)
    tiny_target.state_path.write_text(json.dumps(state))
    tiny_target.set_canary_weight(0)
    assert (
        not psutil.pid_exists(orphan["pid"]) or psutil.Process(orphan["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    assert json.loads(tiny_target.state_path.read_text())["retiring"] == []
    assert _share(tiny_target.endpoint, 10) == {"stable": 10}
