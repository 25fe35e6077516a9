"""Real servers for the integration tests, started on 127.0.0.1 and stopped afterwards.

An S3-compatible object store (Versity S3 Gateway, posix backend), a throwaway PostgreSQL
cluster and an MLflow tracking server backed by both. Each is a context manager that yields a
small description of the running service; credentials are random per run and kept out of
reprs, command lines and error messages.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from driftloop.processes import LOOPBACK, free_port, log_tail, stop_process_tree

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "bin"
REGION = "us-east-1"
_Account = tuple[int, int] | None  # (uid, gid) a server runs as, None for the current user

# seconds to wait for a server to answer before giving up (CI machines are slow under load)
OBJECT_STORE_START_TIMEOUT = 30.0
POSTGRES_START_TIMEOUT = 60.0
MLFLOW_START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
_PORT_ATTEMPTS = 3


class ServiceStartError(RuntimeError):
    """A test service could not be installed or started; the message says what to do."""


# --- what the fixtures hand to tests -------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStore:
    """A running S3-compatible server with one bucket created for the tests."""

    endpoint_url: str
    bucket: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    region: str = REGION

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing, as on any non-AWS endpoint)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def delta_storage_options(self) -> dict[str, str]:
        """`storage_options` for delta-rs (`deltalake.write_deltalake`, `DeltaTable`) on s3:// URIs."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
        }

    def env(self) -> dict[str, str]:
        """Environment for processes that find S3 the standard way (boto3, MLflow, s3a)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL cluster with one database owned by a password-protected user."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    _admin: _PostgresAdmin = field(repr=False, compare=False)

    @property
    def dsn(self) -> str:
        """libpq connection URI (psql, `psycopg.connect`)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def sqlalchemy_url(self) -> str:
        """SQLAlchemy URL with the driver named (MLflow, Optuna, Airflow): psycopg 3."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def create_database(self, name: str) -> Postgres:
        """A new database owned by the same user (idempotent); returns its description."""
        if not name.isidentifier():
            raise ValueError(f"database name must be a plain identifier, got {name!r}")
        exists = self._admin.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if not exists.strip():
            self._admin.psql(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        return replace(self, database=name)

    def query(self, sql: str) -> list[tuple[str, ...]]:
        """Rows of a query run as the cluster's superuser via psql (text values)."""
        out = self._admin.psql(sql, database=self.database)
        return [tuple(line.split("\t")) for line in out.splitlines() if line]


@dataclass(frozen=True)
class _PostgresAdmin:
    """How to reach the cluster as its superuser: psql over the private unix socket."""

    bin_dir: Path
    socket_dir: Path
    port: int
    superuser: str
    password: str = field(repr=False)

    def psql(self, sql: str, database: str = "postgres", hide: tuple[str, ...] = ()) -> str:
        # the statement goes through stdin and the password through the environment, so
        # neither shows up in `ps`
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                database,
                "-f",
                "-",
            ],
            input=sql,
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            error = result.stderr.strip()
            for value in (self.password, *hide):
                error = error.replace(value, "***")
            raise RuntimeError(f"psql failed ({result.returncode}): {error}")
        return result.stdout


@dataclass(frozen=True)
class MlflowServer:
    """A running MLflow tracking server (PostgreSQL store, S3 artifacts proxied by the server)."""

    tracking_uri: str
    artifacts_destination: str
    store: Postgres


# --- process plumbing -----------------------------------------------------------------------------


def _secret() -> str:
    return secrets.token_urlsafe(24)


def _start_error(what: str, log: Path, hint: str, hide: tuple[str, ...] = ()) -> ServiceStartError:
    return ServiceStartError(
        f"{what}\n--- last lines of {log} ---\n{log_tail(log, hide=hide)}\n--- what to do ---\n{hint}"
    )


def _port_taken(log: Path) -> bool:
    text = log_tail(log, lines=80).lower()
    return "address already in use" in text or "could not bind" in text


def _stop_group(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    stop_process_tree(proc, STOP_TIMEOUT, first_signal=sig)


def _launch(cmd: list[str], log: Path, env: dict[str, str], account: _Account) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,  # own process group: teardown kills all of it
            **_as_account(account),
        )


def _as_account(account: _Account) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account[0], "group": account[1], "extra_groups": []}


def _wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once GET url answers 200; False if the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


def _serve(
    name: str,
    make_cmd: Callable[[int], list[str]],
    ready: Callable[[int, subprocess.Popen[bytes]], bool],
    log: Path,
    env: dict[str, str],
    hint: str,
    hide: tuple[str, ...] = (),
    account: _Account = None,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free port and wait until `ready`; retry if another process took the port.

    The caller owns the returned process; if anything goes wrong here (including Ctrl-C while
    waiting), the process is stopped before the exception leaves.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port()
        proc = _launch(make_cmd(port), log, env, account)
        try:
            up = ready(port, proc)
        except BaseException:
            _stop_group(proc, stop_signal)
            raise
        if up:
            return proc, port
        _stop_group(proc, stop_signal)
        if attempt < _PORT_ATTEMPTS and _port_taken(log):
            continue
        state = f"exited with code {proc.returncode}" if proc.returncode else "did not become ready in time"
        raise _start_error(f"{name} {state}", log, hint, hide)
    raise AssertionError("unreachable")


def _http_ok(path: str, timeout: float) -> Callable[[int, subprocess.Popen[bytes]], bool]:
    return lambda port, proc: _wait_http_ok(f"http://{LOOPBACK}:{port}{path}", proc, timeout)


def _temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"driftloop-{prefix}-"))


# --- object store ----------------------------------------------------------------------------------

_OBJECT_STORE_HINT = (
    "run `make setup` (it builds the pinned versitygw into .tools/bin/ with "
    "include/ops/install-object-store.sh), or set DRIFTLOOP_VERSITYGW to a versitygw binary. "
    "The posix backend needs a filesystem with user extended attributes under $TMPDIR."
)


def _versitygw_binary() -> Path:
    configured = os.environ.get("DRIFTLOOP_VERSITYGW")
    binary = Path(configured) if configured else TOOLS_BIN / "versitygw"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ServiceStartError(f"no S3 server binary at {binary}: {_OBJECT_STORE_HINT}")
    return binary


@contextlib.contextmanager
def object_store(bucket: str = "driftloop-test") -> Iterator[ObjectStore]:
    """A Versity S3 Gateway on 127.0.0.1 storing objects as files in a temp dir, with `bucket`."""
    binary = _versitygw_binary()
    workdir = _temp_dir("s3")
    data = workdir / "data"
    data.mkdir()
    log = workdir / "versitygw.log"
    access_key, secret_key = f"driftloop{secrets.token_hex(6)}", _secret()
    # root credentials through the environment, not argv (argv is world-readable in `ps`)
    env = {**os.environ, "ROOT_ACCESS_KEY": access_key, "ROOT_SECRET_KEY": secret_key}

    def command(port: int) -> list[str]:
        return [str(binary), "--port", f"{LOOPBACK}:{port}", "--health", "/health", "posix", str(data)]

    proc = None
    try:
        proc, port = _serve(
            "versitygw",
            command,
            _http_ok("/health", OBJECT_STORE_START_TIMEOUT),
            log,
            env,
            _OBJECT_STORE_HINT,
            hide=(secret_key,),
        )
        store = ObjectStore(f"http://{LOOPBACK}:{port}", bucket, access_key, secret_key)
        store.client().create_bucket(Bucket=bucket)
        yield store
    finally:
        if proc is not None:
            _stop_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# --- PostgreSQL -----------------------------------------------------------------------------------

_POSTGRES_HINT = (
    "run `make setup` (include/ops/install-postgres.sh installs the PostgreSQL server), "
    "or set DRIFTLOOP_PG_BIN_DIR to a directory holding initdb, postgres, pg_isready and psql."
)


def postgres_bin_dir() -> Path:
    """Where initdb/postgres live: $DRIFTLOOP_PG_BIN_DIR, the newest Debian cluster dir, or PATH."""
    candidates: list[Path] = []
    if configured := os.environ.get("DRIFTLOOP_PG_BIN_DIR"):
        candidates.append(Path(configured))
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += debian
    if on_path := shutil.which("postgres") or shutil.which("initdb"):
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "postgres", "pg_isready", "psql")):
            return directory
    raise ServiceStartError(f"PostgreSQL server binaries not found: {_POSTGRES_HINT}")


_INITDB_FLAGS = ("--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
# durability off: the cluster is thrown away, and fsync is the slow part on a loaded CI machine
_POSTGRES_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def _server_account() -> _Account:
    """PostgreSQL refuses to run as root: as root, run the cluster as an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise ServiceStartError("running as root and no `postgres` or `nobody` account to run PostgreSQL as")


def _chown_tree(path: Path, account: _Account) -> None:
    if account is None:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, *account)


def _wait_postgres(bin_dir: Path, sockets: Path, port: int, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + POSTGRES_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        probe = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", str(sockets), "-p", str(port), "-t", "2"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def postgres(database: str = "driftloop", user: str = "driftloop") -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (password auth), with `database` owned by `user`."""
    bin_dir = postgres_bin_dir()
    account = _server_account()
    workdir = _temp_dir("pg")
    data, sockets, log = workdir / "data", workdir / "sockets", workdir / "postgres.log"
    sockets.mkdir()
    superuser, admin_password, password = "postgres", _secret(), _secret()
    pwfile = workdir / "pwfile"
    pwfile.write_text(admin_password + "\n")
    pwfile.chmod(0o600)
    log.touch()
    _chown_tree(workdir, account)
    hide = (admin_password, password)

    def command(port: int) -> list[str]:
        flags = [arg for name, value in _POSTGRES_SETTINGS.items() for arg in ("-c", f"{name}={value}")]
        return [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets), *flags]

    proc = None
    try:
        with log.open("ab") as out:
            init = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    superuser,
                    f"--pwfile={pwfile}",
                    *_INITDB_FLAGS,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                timeout=POSTGRES_START_TIMEOUT,
                check=False,
                **_as_account(account),
            )
        pwfile.unlink()
        if init.returncode != 0:
            raise _start_error("initdb failed", log, _POSTGRES_HINT, hide)
        # the postmaster runs as our child (not daemonized by pg_ctl), so teardown always has
        # its handle, even when interrupted half-way through starting
        proc, port = _serve(
            "PostgreSQL",
            command,
            lambda port, proc: _wait_postgres(bin_dir, sockets, port, proc),
            log,
            dict(os.environ),
            _POSTGRES_HINT,
            hide,
            account,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open sessions, then exit
        )
        admin = _PostgresAdmin(bin_dir, sockets, port, superuser, admin_password)
        # the role's password goes through psql's stdin, never a command line
        admin.psql(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'", hide=(password,))
        admin.psql(f'CREATE DATABASE "{database}" OWNER "{user}"')
        yield Postgres(LOOPBACK, port, database, user, password, admin)
    finally:
        if proc is not None:
            _stop_group(proc, signal.SIGINT)
        shutil.rmtree(workdir, ignore_errors=True)


# --- MLflow ----------------------------------------------------------------------------------------

_MLFLOW_HINT = (
    "run `make setup` (the lock installs mlflow and psycopg[binary] into .venv); "
    "the log above shows the server's own error."
)


@contextlib.contextmanager
def mlflow_server(pg: Postgres, s3: ObjectStore, database: str = "mlflow") -> Iterator[MlflowServer]:
    """`mlflow server` on 127.0.0.1: runs in `database` on `pg`, artifacts in s3://<bucket>/mlflow."""
    if find_spec("psycopg") is None:
        raise ServiceStartError(
            "psycopg (3) is not installed: MLflow needs it for a PostgreSQL store. " + _MLFLOW_HINT
        )
    store = pg.create_database(database)
    destination = f"s3://{s3.bucket}/mlflow"
    workdir = _temp_dir("mlflow")
    log = workdir / "mlflow.log"
    env = {
        **os.environ,
        **s3.env(),
        # the store URI carries the password: pass it by environment, not argv
        "MLFLOW_BACKEND_STORE_URI": store.sqlalchemy_url,
        "MLFLOW_ARTIFACTS_DESTINATION": destination,
        # job workers cost ~2 GB RSS and nothing here needs them
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "TMPDIR": str(workdir),
    }

    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            "1",
        ]

    proc = None
    try:
        proc, port = _serve(
            "mlflow server",
            command,
            _http_ok("/health", MLFLOW_START_TIMEOUT),
            log,
            env,
            _MLFLOW_HINT,
            hide=(pg.password, s3.secret_access_key),
        )
        yield MlflowServer(f"http://{LOOPBACK}:{port}", destination, store)
    finally:
        if proc is not None:
            _stop_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)
