"""Process plumbing for the servers driftloop starts: free ports, log tails, stopping whole trees.

Shared by the embedded Airflow stack and the test services, so each is stopped the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = 40, hide: tuple[str, ...] = ()) -> str:
    """The last lines of a log file, with the given values masked."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    for value in hide:
        if value:
            tail = tail.replace(value, "***")
    return tail or "(log is empty)"


def stop_process_tree(
    process: subprocess.Popen[bytes],
    timeout: float = STOP_TIMEOUT,
    first_signal: signal.Signals = signal.SIGTERM,
) -> None:
    """Stop a process started in its own session, its group and every descendant.

    Airflow's task supervisor puts each task in a process group of its own, so signalling the
    leader's group alone would orphan running tasks (and their Spark JVMs): the descendants
    are collected first and killed if they outlive the graceful stop.
    """
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(descendants, timeout=min(timeout, 5.0))
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5.0)
