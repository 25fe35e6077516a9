"""The long-lived Spark Connect server: one warm, Delta-enabled JVM that tasks run their Spark work on.

:func:`serve` runs inside the server process (``driftloop spark-server``); :class:`SparkConnectServer`
starts, health-checks and stops that process for the embedded stack. Clients reach it through
``DRIFTLOOP_SPARK_REMOTE`` (see :func:`driftloop.lake.spark.get_spark`).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from driftloop.config import Settings
from driftloop.lake.spark import _build_session
from driftloop.log import get_logger
from driftloop.processes import LOOPBACK, free_port, log_tail, stop_process_tree

log = get_logger(__name__)

CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"
START_TIMEOUT_S = 180.0  # a cold JVM took 10-40 s here, more while other JVMs start beside it
STOP_TIMEOUT_S = 30.0
# A task that dies without releasing its session leaves its temp views on the server until this
# idle timeout; tasks release theirs at exit, so an hour only bounds the leftovers of crashes.
SESSION_TIMEOUT = "60min"


class SparkConnectError(RuntimeError):
    """The Spark Connect server did not start or stopped; the message says where to look."""


def server_conf(host: str, port: int) -> dict[str, str]:
    """What turns a driftloop session into a Spark Connect server on ``host:port``."""
    return {
        "spark.plugins": CONNECT_PLUGIN,
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(port),
        # tasks of different DAG runs share the server: a long job does not hold a short one back
        "spark.scheduler.mode": "FAIR",
        "spark.connect.session.manager.defaultSessionTimeout": SESSION_TIMEOUT,
    }


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the server in this process until SIGTERM or SIGINT, then stop Spark."""
    session = _build_session(settings, server_conf(host, port))
    # blocked only now: the JVM is a child of this process and would inherit the blocked mask
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    url = f"sc://{host}:{port}"
    log.info("spark_connect.ready", url=url, master=settings.spark_master, version=session.version)
    received = signal.sigwait(stop_signals)
    log.info("spark_connect.stopping", signal=signal.Signals(received).name)
    with contextlib.suppress(Exception):  # the JVM may already be going down with the same signal
        session.stop()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class SparkConnectServer:
    """Runs ``driftloop spark-server`` as a child process on loopback and waits until it listens.

    :param settings: the settings the server's Spark session is built from (jars, lake, memory).
    :param log_path: where the server's output goes.
    :param port: its gRPC port; None picks a free one.
    """

    def __init__(self, settings: Settings, log_path: Path, port: int | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``sc://`` URL clients set as ``DRIFTLOOP_SPARK_REMOTE``."""
        if self.port is None:
            raise SparkConnectError("the Spark Connect server has not been started")
        return f"sc://{LOOPBACK}:{self.port}"

    def launch(self, env: dict[str, str]) -> None:
        """Start the process (returns at once; :meth:`wait_ready` waits for it)."""
        self.port = self.port or free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "driftloop.cli", "spark-server", "--port", str(self.port)]
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: stop() reaches the JVM too
            )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Return once the server accepts connections; raise with its log if it exits or hangs."""
        if self._process is None or self.port is None:
            raise SparkConnectError("launch() the Spark Connect server before waiting for it")
        deadline = time.monotonic() + timeout
        while not _accepts(LOOPBACK, self.port):
            if self._process.poll() is not None:
                raise SparkConnectError(
                    f"the Spark Connect server exited with code {self._process.returncode}; "
                    f"{self.log_path} ends with:\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise SparkConnectError(
                    f"the Spark Connect server did not listen on {LOOPBACK}:{self.port} within "
                    f"{timeout:.0f} s; {self.log_path} ends with:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server and its JVM (a no-op when it is not running)."""
        if self._process is not None:
            stop_process_tree(self._process, STOP_TIMEOUT_S)
            self._process = None
