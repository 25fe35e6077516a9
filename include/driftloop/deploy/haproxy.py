"""HAProxy as the local traffic splitter: its configuration, its process and its runtime API.

One HAProxy process on loopback, every path (pid, admin socket, log) in its data folder. Weights,
new servers and retired ones change through the runtime API on the admin socket, never a reload,
so no client connection is closed by a change; the configuration file follows every change, so a
restarted HAProxy comes back with the current servers and weights.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from driftloop.deploy.base import DeployError
from driftloop.processes import LOOPBACK, log_tail

HAPROXY_ENV = "DRIFTLOOP_HAPROXY_BINARY"  # a haproxy to run instead of .tools/haproxy (e.g. a system one)
_CHECKOUT_ROOT = Path(__file__).resolve().parents[3]
_INSTALL_ROOT = _CHECKOUT_ROOT / ".tools" / "haproxy"  # include/ops/install-haproxy.sh unpacks it here
_INSTALLED_BINARY = _INSTALL_ROOT / "usr" / "sbin" / "haproxy"
# the unpacked Lua and OpenTracing libraries it links, which a base system lacks
_INSTALLED_LIBRARIES = _INSTALL_ROOT / "usr" / "lib" / "x86_64-linux-gnu"

FRONTEND = "splitter"
BACKEND = "variants"
STATUS_PATH = "/_splitter"  # answered by HAProxy itself: how many servers take traffic
METRICS_PATH = "/_splitter/metrics"  # HAProxy's built-in Prometheus exporter
MAX_WEIGHT = 100  # weights are percentages (HAProxy accepts 0..256)
# One thread: the model servers need the cores, and one HAProxy thread proxies far more requests
# than a Python model server answers.
THREADS = 1
MAX_CLIENT_CONNECTIONS = 1024
CONNECT_TIMEOUT_S = 2  # loopback: a server that does not accept in 2 s is down; try another one
# longest wait for a server's response: above the service's own request timeout, so a slow
# request gets the service's 504 (counted in its metrics), not one from the splitter
SERVER_TIMEOUT_MARGIN_S = 5
QUEUE_TIMEOUT_S = 10  # longest wait for a free slot under splitter_server_maxconn, then 503
CLIENT_TIMEOUT_S = 60  # an idle client keep-alive connection is closed after this
REQUEST_TIMEOUT_S = 30  # a client has this long to send a whole request's headers
RETRIES = 3
# HAProxy 2.6 has no idle timeout per server connection: every purge delay it closes half of the
# idle connections beyond recent need, which emptied a pool of 4 within 4 s of the last request
# here, below the 5 s after which uvicorn (under BentoML) closes an idle connection itself.
IDLE_PURGE_DELAY_S = 1
REQUEST_ID_HEADER = "X-Request-ID"
# the access log: one line per request with the server that answered (%s) and what it cost
ACCESS_LOG_FORMAT = (
    "%tr %{+Q}[capture.req.hdr(0)] %{+Q}r %ST %B %Ta server=%s retries=%rc "
    "queue_ms=%Tw connect_ms=%Tc response_ms=%Tr"
)
# Unix socket paths are limited to 108 bytes (HAProxy binds "<path>.<pid>.tmp" first): the admin
# socket is named relative to the splitter folder, where HAProxy runs, and reached through it.
ADMIN_SOCKET = "admin.sock"
ADMIN_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
DELETE_TIMEOUT_S = 10.0  # HAProxy closes a retired server's idle connections before it may go
STOP_TIMEOUT_S = 15.0
_POLL_S = 0.05
_SERVER_NAME = re.compile(r"[^A-Za-z0-9_.:-]")  # the characters HAProxy allows in a server name
# what the runtime API answers on success; anything else it writes back is an error message
_RUNTIME_OK = {"New server registered.", "Server deleted."}
_STILL_CONNECTED = "still has connections"


def server_name(variant: str, model_version: str, port: int) -> str:
    """A server's name in HAProxy (and its access log): which variant and version, on which port."""
    return _SERVER_NAME.sub("_", f"{variant}-v{model_version}-{port}")


@dataclass(frozen=True)
class Server:
    """One model server in the splitter's backend."""

    name: str  # unique per server process (see server_name)
    port: int
    weight: int  # percent of requests; 0: in the backend, but sent none
    host: str = LOOPBACK

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"server {self.name!r}: weight must be 0..{MAX_WEIGHT}, got {self.weight}")
        if not self.name or _SERVER_NAME.search(self.name):
            raise ValueError(f"server name {self.name!r} may hold only letters, digits and -_.:")


@dataclass(frozen=True)
class SplitterConfig:
    """Everything the rendered haproxy.cfg depends on."""

    host: str
    port: int
    servers: tuple[Server, ...]
    max_body_bytes: int
    server_maxconn: int = 0  # 0: no limit (settings.serving.splitter_server_maxconn)
    request_timeout_s: float = 30.0  # the service's own (settings.serving.request_timeout_s)

    @property
    def server_timeout_s(self) -> int:
        return math.ceil(self.request_timeout_s) + SERVER_TIMEOUT_MARGIN_S

    @property
    def drain_timeout_s(self) -> float:
        """A retired server's last request waits for a slot, then for its response (its retries,
        if any, go to other servers)."""
        return float(QUEUE_TIMEOUT_S + self.server_timeout_s + 5)

    def weights(self) -> dict[str, int]:
        return {server.name: server.weight for server in self.servers}


@dataclass(frozen=True)
class ServerState:
    """One server as the running HAProxy reports it (``show stat``)."""

    name: str
    address: str
    weight: int
    status: str  # "no check" when it takes traffic by its weight; "DRAIN" or "MAINT" when retired
    in_flight: int  # requests it is serving now
    queued: int  # requests waiting for one of its slots

    @property
    def active(self) -> bool:
        return self.status not in ("DRAIN", "MAINT")


@dataclass(frozen=True)
class SplitterPaths:
    """Where the splitter keeps its configuration, pid, admin socket and log (all under ``root``)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def pid(self) -> Path:
        return self.root / "haproxy.pid"

    @property
    def admin_socket(self) -> Path:
        return self.root / ADMIN_SOCKET

    @property
    def log(self) -> Path:
        """HAProxy's own messages and the access log (it logs to stdout, sent here)."""
        return self.root / "haproxy.log"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)


def server_options(server: Server, maxconn: int) -> str:
    """A server's address and options, the same in the configuration file and in ``add server``.

    Servers added at run time inherit nothing from the configuration, so every option is spelled
    out on every server.
    """
    return (
        f"{server.host}:{server.port} weight {server.weight} maxconn {maxconn} "
        f"pool-max-conn -1 pool-purge-delay {IDLE_PURGE_DELAY_S}s"
    )


def _json_body(detail: str) -> str:
    # single quotes: HAProxy takes the text literally (JSON's double quotes included)
    return f"'{json.dumps({'detail': detail})}'"


def render_config(config: SplitterConfig) -> str:
    """The haproxy.cfg: one loopback listener, weighted round-robin over ``config.servers``.

    Paths in it are relative to the splitter folder, where HAProxy runs (see Splitter.start).
    """
    too_large = _json_body(f"request body larger than {config.max_body_bytes} bytes")
    no_server = _json_body("no model variant is serving: deploy the stable variant first")
    lines = [
        "# driftloop traffic splitter: weighted round-robin over the model servers.",
        "# Generated by driftloop.deploy.haproxy; do not edit: driftloop rewrites it on every change,",
        "# and changes weights and servers through the admin socket, never by a reload.",
        "global",
        f"    nbthread {THREADS}",
        f"    maxconn {MAX_CLIENT_CONNECTIONS}",
        # a second HAProxy on the same port would share its traffic: fail to bind instead
        "    noreuseport",
        f"    hard-stop-after {int(STOP_TIMEOUT_S)}s",
        f"    stats socket unix@{ADMIN_SOCKET} mode 600 level admin",
        f"    stats timeout {int(ADMIN_TIMEOUT_S)}s",
        # HAProxy runs in the foreground with stdout going to the log file
        "    log stdout format raw local0",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        "    option forwardfor",
        f"    timeout connect {CONNECT_TIMEOUT_S}s",
        f"    timeout client {CLIENT_TIMEOUT_S}s",
        f"    timeout http-request {REQUEST_TIMEOUT_S}s",
        f"    timeout http-keep-alive {CLIENT_TIMEOUT_S}s",
        f"    timeout server {config.server_timeout_s}s",
        f"    timeout queue {QUEUE_TIMEOUT_S}s",
        # A server that is going away (connection refused or closed with no answer, or a 503) never
        # surfaces as an error: the request goes to another server. Scoring has no side effect but
        # its log line, so replaying a POST is safe. A timed-out request is not replayed (it may
        # still be scored); bodies beyond HAProxy's 16 kB buffer are replayed only when the
        # connection failed before they were sent.
        f"    retries {RETRIES}",
        "    retry-on conn-failure empty-response 503",
        "    option redispatch 1",
        # The first request of a client may go over a server connection another client left idle:
        # no connect and accept on a single-worker server per new client. "always" is safe here:
        # nothing between HAProxy and a loopback server breaks connections, the idle pool empties
        # before uvicorn's idle timeout, and a request written onto a connection the server closes
        # at that instant is replayed (retry-on empty-response).
        "    http-reuse always",
        "",
        f"frontend {FRONTEND}",
        f"    bind {config.host}:{config.port}",
        # keep the client's request id, else (none, or empty) give one; logged and passed to the server
        "    unique-id-format %[uuid()]",
        f"    http-request set-header {REQUEST_ID_HEADER} %[unique-id] "
        f"unless {{ req.hdr({REQUEST_ID_HEADER}) -m len gt 0 }}",
        f"    http-request capture req.hdr({REQUEST_ID_HEADER}) len 64",
        f'    log-format "{ACCESS_LOG_FORMAT}"',
        # the same limit the service enforces, so an oversized body never crosses the proxy (a
        # chunked body has no length up front: the service refuses it)
        f"    http-request deny deny_status 413 content-type application/json string {too_large} "
        f"if {{ req.hdr_val(content-length) gt {config.max_body_bytes} }}",
        f"    http-request return status 200 content-type application/json "
        f"lf-string '{{\"servers\": %[nbsrv({BACKEND})]}}' if {{ path {STATUS_PATH} }}",
        f"    http-request use-service prometheus-exporter if {{ path {METRICS_PATH} }}",
        f"    http-request return status 503 content-type application/json string {no_server} "
        f"if {{ nbsrv({BACKEND}) eq 0 }}",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        # per request, in proportion to the weights and evenly spread: 90/10 is exact over 100
        "    balance roundrobin",
        *(f"    server {s.name} {server_options(s, config.server_maxconn)}" for s in config.servers),
        "",
    ]
    return "\n".join(lines)


def haproxy_binary() -> Path:
    """The haproxy to run: $DRIFTLOOP_HAPROXY_BINARY, else the one `make setup` unpacked, else PATH."""
    configured = os.environ.get(HAPROXY_ENV)
    if configured:
        path = Path(configured)
        if not os.access(path, os.X_OK):
            raise DeployError(f"{HAPROXY_ENV}={configured} is not an executable haproxy binary")
        return path
    if os.access(_INSTALLED_BINARY, os.X_OK):
        return _INSTALLED_BINARY
    found = shutil.which("haproxy")
    if found:
        return Path(found)
    raise DeployError(
        "haproxy not found: run `make services` (it unpacks Debian's haproxy into .tools/haproxy), "
        f"or set {HAPROXY_ENV} to a haproxy binary (2.6 or newer)"
    )


def haproxy_env(binary: Path) -> dict[str, str]:
    """The environment to run ``binary`` in: the unpacked one finds its libraries in .tools/haproxy."""
    env = dict(os.environ)
    if binary == _INSTALLED_BINARY:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(_INSTALLED_LIBRARIES), *filter(None, [env.get("LD_LIBRARY_PATH")])]
        )
    return env


class Splitter:
    """Controls the HAProxy of one splitter folder: start, runtime changes, stop.

    HAProxy runs in the foreground (``-db``) in a session of its own, so it outlives the Airflow
    task that started it, with its output going to the log file. It is tracked by a pid file that
    every call checks against the process's command line, so a recycled pid is never signalled.
    """

    def __init__(self, root: Path, binary: Path | None = None) -> None:
        self.paths = SplitterPaths(root)
        self._binary = binary

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = haproxy_binary()
        return self._binary

    # --- the process -----------------------------------------------------------------------------

    def pid(self) -> int | None:
        """HAProxy's pid if it is running with this folder's configuration, else None."""
        try:
            pid = int(self.paths.pid.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            command = process.cmdline()  # [<binary>, "-db", "-f", <conf>]
        except psutil.Error:
            return False
        return bool(command) and "haproxy" in Path(command[0]).name and str(self.paths.conf) in command

    def check(self, text: str) -> None:
        """Raise DeployError unless HAProxy accepts ``text`` as its configuration (`haproxy -c`)."""
        self.paths.create()
        candidate = self.paths.root / "haproxy.cfg.candidate"
        candidate.write_text(text)
        try:
            result = subprocess.run(
                [str(self.binary), "-c", "-f", str(candidate)],
                cwd=self.paths.root,
                env=haproxy_env(self.binary),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        finally:
            candidate.unlink(missing_ok=True)
        if result.returncode != 0:
            # its [NOTICE] lines say only which version and binary ran
            output = "\n".join(
                line
                for line in (result.stdout + result.stderr).splitlines()
                if not line.startswith("[NOTICE]")
            )
            raise DeployError(
                f"haproxy configuration check failed (exit {result.returncode}):\n{output.strip()}"
            )

    def _write(self, text: str) -> None:
        partial = self.paths.conf.with_suffix(".cfg.partial")
        partial.write_text(text)
        os.replace(partial, self.paths.conf)

    def start(self, config: SplitterConfig) -> int:
        """Start HAProxy with ``config`` and wait until its admin socket reports those servers; its pid."""
        text = render_config(config)
        self.check(text)
        self._stop_strays()
        self._write(text)
        self.paths.pid.unlink(missing_ok=True)
        with self.paths.log.open("ab") as log:
            process = subprocess.Popen(
                [str(self.binary), "-db", "-f", str(self.paths.conf)],
                cwd=self.paths.root,  # the admin socket's path is relative to it
                env=haproxy_env(self.binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own session: outlives us, no terminal's signals
            )
        partial = self.paths.pid.with_suffix(".pid.partial")
        partial.write_text(f"{process.pid}\n")
        os.replace(partial, self.paths.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.paths.pid.unlink(missing_ok=True)
                raise DeployError(
                    f"haproxy exited with code {process.returncode} at start (is port {config.port} on "
                    f"{config.host} taken? set DRIFTLOOP_SERVING__SPLITTER_PORT); "
                    f"{self.paths.log} ends with:\n{log_tail(self.paths.log)}"
                )
            with contextlib.suppress(DeployError):
                if self._routes_as(config, self.servers()):
                    return process.pid
            time.sleep(_POLL_S)
        self.stop()
        raise DeployError(
            f"haproxy did not answer on its admin socket {self.paths.admin_socket} within "
            f"{START_TIMEOUT_S:.0f} s; {self.paths.log} ends with:\n{log_tail(self.paths.log)}"
        )

    def _stop_strays(self) -> None:
        # An HAProxy of this folder that lost its pid file (the folder was cleaned while it ran)
        # would keep the port and the socket: it is ours if it runs our configuration file.
        strays = []
        for process in psutil.process_iter(["cmdline"]):
            command = process.info["cmdline"] or []
            if str(self.paths.conf) in command and self._is_ours(process.pid):
                strays.append(process)
        _kill(strays)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Soft stop (SIGUSR1: no new connections, in-flight requests finish), SIGKILL after ``timeout``."""
        pid = self.pid()
        if pid is None:
            self.paths.pid.unlink(missing_ok=True)
            return
        try:
            process = psutil.Process(pid)
            os.kill(pid, signal.SIGUSR1)
        except (psutil.NoSuchProcess, ProcessLookupError):
            self.paths.pid.unlink(missing_ok=True)
            return
        _, alive = psutil.wait_procs([process], timeout=timeout)
        _kill(alive)
        self.paths.pid.unlink(missing_ok=True)

    # --- the runtime API -------------------------------------------------------------------------

    def runtime(self, *commands: str) -> str:
        """Send ``commands`` to the admin socket in one write (run in order, ';'-separated); the answer."""
        # Connecting through the folder's file descriptor keeps the socket's path short whatever
        # the data folder's length (a unix socket path holds 108 bytes at most).
        try:
            folder = os.open(self.paths.root, os.O_PATH | os.O_DIRECTORY)
        except OSError as error:
            raise DeployError(f"haproxy's folder {self.paths.root} is missing: {error}") from error
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
                admin.settimeout(ADMIN_TIMEOUT_S)
                admin.connect(f"/proc/self/fd/{folder}/{ADMIN_SOCKET}")
                admin.sendall(("; ".join(commands) + "\n").encode())
                chunks = []
                while chunk := admin.recv(65536):
                    chunks.append(chunk)
        except OSError as error:
            raise DeployError(
                f"haproxy's admin socket {self.paths.admin_socket} does not answer ({error}); "
                f"{self.paths.log} ends with:\n{log_tail(self.paths.log, lines=10)}"
            ) from error
        finally:
            os.close(folder)
        return b"".join(chunks).decode(errors="replace")

    def _change(self, *commands: str) -> None:
        """Run changing ``commands``; DeployError with HAProxy's messages if any of them failed."""
        if not commands:
            return
        answer = self.runtime(*commands)
        errors = [line for line in answer.splitlines() if line.strip() and line.strip() not in _RUNTIME_OK]
        if errors:
            raise DeployError(f"haproxy refused {'; '.join(commands)!r}: {' '.join(errors)}")

    def servers(self) -> dict[str, ServerState]:
        """The backend's servers as HAProxy routes now, by name."""
        answer = self.runtime(f"show stat {BACKEND} 4 -1")  # type 4: servers only
        if not answer.startswith("# "):
            raise DeployError(f"haproxy's `show stat` answered {answer.strip()!r}")
        rows = csv.DictReader(io.StringIO(answer[2:]))
        return {
            row["svname"]: ServerState(
                name=row["svname"],
                address=row["addr"],
                weight=int(row["uweight"] or 0),
                status=row["status"],
                in_flight=int(row["scur"] or 0),
                queued=int(row["qcur"] or 0),
            )
            for row in rows
            if row.get("pxname") == BACKEND
        }

    @staticmethod
    def _routes_as(config: SplitterConfig, servers: dict[str, ServerState]) -> bool:
        return {name: s.weight for name, s in servers.items() if s.active} == config.weights() and all(
            servers[s.name].address == f"{s.host}:{s.port}" for s in config.servers
        )

    def routes_as(self, config: SplitterConfig) -> bool:
        """The running HAProxy has exactly ``config``'s servers taking traffic, with its weights."""
        try:
            return self._routes_as(config, self.servers())
        except DeployError:
            return False

    def apply(self, config: SplitterConfig) -> None:
        """Bring the running HAProxy to ``config`` through the runtime API, and its file with it.

        In one write: new servers are added with their weights (they must be ready already: they
        get traffic at once) and raised weights are set, then lowered weights, then the servers
        ``config`` leaves out are drained. The commands run one after another: a request routed
        between two of them sees the new weight of one server and the old of another, and goes to
        a ready server either way. A drained server gets no new request; once HAProxy reports none
        in flight or queued on it, it is removed, and only then does this return.
        """
        text = render_config(config)
        self.check(text)
        self._write(text)  # a HAProxy restarted from here on comes back as config says
        running = self.servers()
        rising: list[str] = []  # servers added and weights raised
        falling: list[str] = []  # weights lowered and servers drained
        for server in config.servers:
            name = f"{BACKEND}/{server.name}"
            current = running.get(server.name)
            if current is None:
                rising += [
                    f"add server {name} {server_options(server, config.server_maxconn)}",
                    f"enable server {name}",  # a server added at run time starts in maintenance
                ]
            elif current.address != f"{server.host}:{server.port}":
                raise DeployError(
                    f"haproxy's server {server.name} is at {current.address}, expected "
                    f"{server.host}:{server.port}; stop the deployment (LocalTarget.stop_all()) to reset it"
                )
            elif not current.active:  # drained by a change that failed half-way: back in
                rising += [f"set server {name} weight {server.weight}", f"set server {name} state ready"]
            elif server.weight > current.weight:
                rising.append(f"set server {name} weight {server.weight}")
            elif server.weight < current.weight:
                falling.append(f"set server {name} weight {server.weight}")
        retired = [name for name in running if name not in config.weights()]
        falling += [f"set server {BACKEND}/{name} state drain" for name in retired if running[name].active]
        # Roundrobin places a server anew when its weight changes within a round: lowering one
        # server before raising the other skewed the next hundreds of requests here (a canary
        # moved from 90 to 10 got none of the next 500); raising first kept every 100 requests
        # within one of the new weights, over 100 random changes.
        self._change(*rising, *falling)
        self._remove(retired, config.drain_timeout_s)
        if not self.routes_as(config):
            raise DeployError(
                f"haproxy routes by {self.servers()} after the changes, expected the weights "
                f"{config.weights()}; see {self.paths.log}"
            )

    def _remove(self, names: Sequence[str], drain_timeout_s: float) -> None:
        """Wait until drained servers have nothing in flight or queued, then delete them."""
        if not names:
            return
        self._wait(
            lambda: not [s for n, s in self.servers().items() if n in names and (s.in_flight or s.queued)],
            drain_timeout_s,
            lambda: (
                f"retired servers {list(names)} still have requests in flight after "
                f"{drain_timeout_s:.0f} s: {self.servers()}"
            ),
        )
        self._change(*(f"set server {BACKEND}/{name} state maint" for name in names))
        for name in names:
            # maintenance closes its idle connections; deletion is refused until they are gone
            self._wait(
                lambda name=name: self._delete(name),
                DELETE_TIMEOUT_S,
                lambda name=name: f"haproxy still holds connections to {name} after {DELETE_TIMEOUT_S:.0f} s",
            )

    def _delete(self, name: str) -> bool:
        answer = self.runtime(f"del server {BACKEND}/{name}").strip()
        if answer in _RUNTIME_OK or name not in self.servers():
            return True
        if _STILL_CONNECTED in answer:
            return False
        raise DeployError(f"haproxy refused to delete server {name}: {answer}")

    @staticmethod
    def _wait(done: Callable[[], bool], timeout: float, problem: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise DeployError(problem())
            time.sleep(_POLL_S)


def _kill(processes: Iterable[psutil.Process]) -> None:
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5.0)
