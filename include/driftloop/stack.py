"""The embedded Airflow stack: Airflow 3's four components as local processes on 127.0.0.1.

It owns the Airflow home under the data folder (metadata DB, secrets, users, logs), starts and
stops the processes (and the Spark Connect server its tasks share), waits for health, and speaks
the REST API (token, trigger, unpause, wait).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from driftloop.config import Settings, get_settings
from driftloop.lake.spark_connect import SparkConnectServer
from driftloop.processes import LOOPBACK, free_port, log_tail, port_is_free, stop_process_tree

# the simple auth manager's users: name -> role (the role names are Airflow's own)
USERS: Mapping[str, str] = {"admin": "admin", "viewer": "viewer"}
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
TERMINAL_RUN_STATES = frozenset({"success", "failed"})

# the repository's dags/ and plugins/ when driftloop is installed from a checkout
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
_JWT_SECRET_BYTES = 64  # random bytes; HS512 signing wants a key of at least 64 bytes
_MIGRATE_TIMEOUT = 600.0
_STOP_TIMEOUT = 20.0
_METADATA_DB = "driftloop.airflow.metadata_db"  # the SQLite connection arguments
_SETTINGS_PREFIX = "DRIFTLOOP_"


class StackError(RuntimeError):
    """The Airflow stack could not start or answer; the message says what to look at."""


class ApiError(StackError):
    """The REST API answered with an error status; ``status`` and ``body`` say which and why."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Component:
    """One Airflow process of the stack and the log file it writes to."""

    name: str
    args: tuple[str, ...]
    # the module that runs Airflow's CLI: the scheduler's imports the task libraries first, so
    # the tasks it forks start with them (driftloop.airflow.preload)
    module: str = "airflow"


@dataclass
class _Running:
    component: Component
    process: subprocess.Popen[bytes]
    log: Path


# --- process plumbing ---------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """``DRIFTLOOP_*`` variables that reproduce ``settings`` in another process (non-defaults only)."""
    env: dict[str, str] = {}

    def flatten(prefix: str, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            name = f"{prefix}{key.upper()}"
            if isinstance(value, Mapping):
                flatten(f"{name}__", value)
            else:  # None becomes "null" (the settings' spelling of None); never an empty value
                env[name] = value if isinstance(value, str) else json.dumps(value)

    flatten(_SETTINGS_PREFIX, settings.model_dump(mode="json", exclude_defaults=True))
    env[f"{_SETTINGS_PREFIX}DATA_DIR"] = str(settings.data_dir)
    return env


def _is_settings_variable(name: str) -> bool:
    if not name.startswith(_SETTINGS_PREFIX):
        return False
    field_name = name[len(_SETTINGS_PREFIX) :].split("__", 1)[0].lower()
    return field_name in Settings.model_fields


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: created 0600, and tightened if it already existed."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _load_or_create_json(
    path: Path, make: Callable[[], dict[str, str]], required: set[str]
) -> dict[str, str]:
    """Secrets generated once and kept in the Airflow home, so a restart keeps tokens and logins valid."""
    current: dict[str, str] = {}
    if path.exists():
        current = json.loads(path.read_text())
    if required <= current.keys():
        return current
    merged = make() | current
    _write_private(path, json.dumps(merged, indent=2) + "\n")
    return merged


# --- the stack ------------------------------------------------------------------------------------


class AirflowStack:
    """Airflow's api-server, scheduler, dag-processor and triggerer on 127.0.0.1 (LocalExecutor, SQLite).

    Use as a context manager (or ``start()``/``stop()``); every process it starts is stopped
    again, with everything it spawned.

    :param settings: driftloop settings the tasks run with (exported as ``DRIFTLOOP_*``);
        the Airflow home is ``<data_dir>/airflow``.
    :param port: port of the API server; None picks a free one.
    :param parallelism: how many task instances may run at once (the machine has 2 cores).
    :param job_schedules: False stops the scheduler from creating cron- and Asset-triggered runs,
        leaving only manual (REST) runs: unpausing a DAG with ``catchup=False`` otherwise starts
        a run for its latest cron tick at once.
    :param dags_folder: the DAG files; the checkout's ``dags/`` by default.
    :param spark_server: run a Spark Connect server beside Airflow and point the tasks at it
        (``DRIFTLOOP_SPARK_REMOTE``), so a Spark task finds a warm JVM instead of starting one;
        None: only when the settings name no server of their own (``spark_remote``).
    :param start_timeout: seconds to wait for every component to report healthy.
    :param echo: where progress lines go (stderr by default).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        port: int | None = None,
        parallelism: int = 4,
        job_schedules: bool = True,
        dags_folder: Path | None = None,
        spark_server: bool | None = None,
        start_timeout: float = 300.0,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.spark_server = self.settings.spark_remote is None if spark_server is None else spark_server
        self.home = self.settings.data_dir / "airflow"
        self.logs = self.home / "logs-stack"
        self.port = port
        self.parallelism = parallelism
        self.job_schedules = job_schedules
        self.dags_folder = dags_folder or _CHECKOUT_ROOT / "dags"
        self.start_timeout = start_timeout
        self._echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self._running: list[_Running] = []
        self._spark: SparkConnectServer | None = None
        self._passwords: dict[str, str] = {}
        self._secrets: dict[str, str] = {}
        self._tokens: dict[str, str] = {}
        self._http: httpx.Client | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> AirflowStack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise StackError("the stack has not been started: no API server port yet")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"{self.base_url}/"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def credentials(self) -> dict[str, str]:
        """user -> password of the stack's users (admin, viewer)."""
        if not self._passwords:
            self._prepare_home()
        return dict(self._passwords)

    def start(self) -> AirflowStack:
        """Migrate the metadata DB, start the four components and wait until all are healthy."""
        if self._running:
            return self
        began = time.monotonic()
        if self.port is None:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise StackError(
                f"port {self.port} on {LOOPBACK} is in use (another `make up`?): stop that "
                "process or choose another port"
            )
        self._prepare_home()
        try:
            if self.spark_server:
                # its JVM starts while Airflow migrates and starts; the tasks get its URL
                self._spark = SparkConnectServer(self.settings, self.logs / "spark-connect.log")
                self._spark.launch(self._environment())
                self.settings = self.settings.model_copy(update={"spark_remote": self._spark.url})
            env = self._environment()
            self._migrate(env)
            _create_mlflow_store(self.settings)
            for component in self._components():
                self._launch(component, env)
            self._wait_healthy(began)
            if self._spark is not None:
                self._spark.wait_ready()
                self._echo(f"spark: Spark Connect server ready at {self._spark.url}")
        except BaseException:
            self.stop()
            raise
        self._echo(f"airflow: healthy after {time.monotonic() - began:.0f}s at {self.base_url}")
        return self

    def stop(self) -> None:
        """Stop every component (scheduler first, API server last) and everything it spawned."""
        if self._http is not None:
            self._http.close()
            self._http = None
        self._tokens.clear()
        # the API server last, as running tasks report to it; the others in parallel, since the
        # triggerer alone takes ~10 s to wind down
        api = [r for r in self._running if r.component.name == "api-server"]
        others = [r for r in self._running if r not in api]
        for group in (others, api):
            with ThreadPoolExecutor(max_workers=max(len(group), 1)) as pool:
                list(pool.map(lambda running: stop_process_tree(running.process, _STOP_TIMEOUT), group))
        self._running.clear()
        # last: until the scheduler and its tasks are gone, a task may still be using it
        if self._spark is not None:
            self._spark.stop()
            self._spark = None

    def exited(self) -> dict[str, Path]:
        """Components that have stopped on their own: name -> its log file."""
        exited = {r.component.name: r.log for r in self._running if r.process.poll() is not None}
        if self._spark is not None and not self._spark.running():
            exited["spark-connect"] = self._spark.log_path
        return exited

    # -- setup ----------------------------------------------------------------------------------

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        self.logs.mkdir(exist_ok=True)
        self._secrets = _load_or_create_json(
            self.home / "stack-secrets.json",
            lambda: {
                "jwt_secret": secrets.token_urlsafe(_JWT_SECRET_BYTES),
                "api_secret_key": secrets.token_urlsafe(32),
                "fernet_key": _fernet_key(),
            },
            {"jwt_secret", "api_secret_key", "fernet_key"},
        )
        # written before the API server starts, so Airflow never generates (and prints) passwords
        self._passwords = _load_or_create_json(
            self.passwords_file, lambda: {user: secrets.token_urlsafe(12) for user in USERS}, set(USERS)
        )

    def _environment(self) -> dict[str, str]:
        """The components' environment: ours, minus stale driftloop settings, plus Airflow's config."""
        inherited = {k: v for k, v in os.environ.items() if not _is_settings_variable(k)}
        config = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            # a writer waits for SQLite's lock up to 30 s instead of failing after 5 (a 500 over REST)
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{_METADATA_DB}.SYNC_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{_METADATA_DB}.ASYNC_CONNECT_ARGS",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet_key"],
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secrets["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt_secret"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.job_schedules),
        }
        plugins = _CHECKOUT_ROOT / "plugins"
        if plugins.is_dir():
            config["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(plugins)
        return inherited | settings_env(self.settings) | config

    def _components(self) -> list[Component]:
        return [
            Component("api-server", ("api-server", "--host", LOOPBACK, "--port", str(self.port))),
            Component("scheduler", ("scheduler", "--skip-serve-logs"), module="driftloop.airflow.preload"),
            Component("dag-processor", ("dag-processor",)),
            Component("triggerer", ("triggerer", "--skip-serve-logs")),
        ]

    def _airflow(self, *args: str, module: str = "airflow") -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _migrate(self, env: dict[str, str]) -> None:
        log = self.logs / "db-migrate.log"
        self._echo(f"airflow: migrating the metadata DB in {self.home} …")
        with log.open("ab") as out:
            try:
                result = subprocess.run(
                    self._airflow("db", "migrate"),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.home,
                    timeout=_MIGRATE_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise self._error(f"`airflow db migrate` took over {_MIGRATE_TIMEOUT:.0f}s", log) from None
        if result.returncode != 0:
            raise self._error(f"`airflow db migrate` failed with code {result.returncode}", log)

    def _launch(self, component: Component, env: dict[str, str]) -> None:
        log = self.logs / f"{component.name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                self._airflow(*component.args, module=component.module),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.home,
                start_new_session=True,  # own process group: stop() reaches all of it
            )
        self._running.append(_Running(component, process, log))

    def _wait_healthy(self, began: float) -> None:
        deadline = began + self.start_timeout
        last_report, health = 0.0, {}
        self._echo(f"airflow: starting {', '.join(r.component.name for r in self._running)} …")
        while time.monotonic() < deadline:
            for running in self._running:
                if running.process.poll() is not None:
                    raise self._error(
                        f"airflow {running.component.name} exited with code {running.process.returncode}",
                        running.log,
                    )
            health = self._health()
            unhealthy = [c for c in HEALTH_COMPONENTS if health.get(c, {}).get("status") != "healthy"]
            if not unhealthy:
                return
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                self._echo(
                    f"airflow: {time.monotonic() - began:4.0f}s, waiting for {', '.join(unhealthy)}"
                    + ("" if health else " (API server not answering yet)")
                )
            time.sleep(1.0)
        unhealthy = [c for c in HEALTH_COMPONENTS if health.get(c, {}).get("status") != "healthy"]
        logs = {"metadatabase": "api-server", "dag_processor": "dag-processor"}
        worst = next(
            (r for r in self._running if r.component.name == logs.get(unhealthy[0], unhealthy[0])), None
        )
        raise self._error(
            f"airflow did not become healthy within {self.start_timeout:.0f}s; "
            f"unhealthy: {', '.join(unhealthy)}; last health: {json.dumps(health) or 'no answer'}",
            worst.log if worst else self.logs / "api-server.log",
        )

    def _health(self) -> dict[str, Any]:
        try:
            response = self._client().get("/api/v2/monitor/health", timeout=5)
        except httpx.HTTPError:
            return {}
        return response.json() if response.status_code == 200 else {}

    def _error(self, what: str, log: Path) -> StackError:
        hide = (*self._secrets.values(), *self._passwords.values())
        return StackError(
            f"{what}\n--- last lines of {log} ---\n{log_tail(log, hide=hide)}\n--- what to do ---\n"
            f"read the component logs in {self.logs}; `make setup` reinstalls Airflow if it is "
            f"missing; delete {self.home} to start from an empty Airflow home"
        )

    # -- REST API -------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            # trust_env=False: a proxy from the environment must never see loopback traffic
            self._http = httpx.Client(base_url=self.base_url, timeout=30, trust_env=False)
        return self._http

    def token(self, user: str = "admin", password: str | None = None) -> str:
        """A JWT for ``user`` from ``POST /auth/token`` (cached per user unless a password is given)."""
        if password is None and user in self._tokens:
            return self._tokens[user]
        secret = password if password is not None else self.credentials().get(user)
        if secret is None:
            raise StackError(f"unknown user {user!r}: the stack has {', '.join(USERS)}")
        response = self._client().post("/auth/token", json={"username": user, "password": secret})
        if response.status_code != 201:
            raise ApiError("POST", "/auth/token", response.status_code, _body(response))
        token = response.json()["access_token"]
        if password is None:
            self._tokens[user] = token
        return token

    def request(self, method: str, path: str, *, user: str = "admin", **kwargs: Any) -> Any:
        """Call the REST API as ``user``; returns the JSON body or raises :class:`ApiError`."""
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        response = self._client().request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            raise ApiError(method, path, response.status_code, _body(response))
        return response.json() if response.content else None

    def unpause(self, dag_id: str, *, user: str = "admin") -> None:
        """Unpause a DAG (new DAGs start paused)."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}", user=user, json={"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, *, user: str = "admin") -> str:
        """Trigger a manual run with ``conf``; returns its run id."""
        body = {"logical_date": None, "conf": dict(conf or {})}
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", user=user, json=body)
        return run["dag_run_id"]

    def wait_for_dags(self, *dag_ids: str, timeout: float = 120.0) -> None:
        """Wait until the dag-processor has registered ``dag_ids``; fail early on import errors."""
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while time.monotonic() < deadline:
            errors = self.request("GET", "/api/v2/importErrors")["import_errors"]
            if errors:
                details = "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in errors)
                raise StackError(f"DAG files failed to import:\n{details}")
            missing = [d for d in dag_ids if not self._dag_exists(d)]
            if not missing:
                return
            time.sleep(1.0)
        raise StackError(
            f"DAGs {', '.join(missing)} not parsed within {timeout:.0f}s: see "
            f"{self.logs / 'dag-processor.log'} and {self.home / 'logs' / 'dag_processor'}"
        )

    def _dag_exists(self, dag_id: str) -> bool:
        try:
            self.request("GET", f"/api/v2/dags/{dag_id}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 2.0) -> dict:
        """Poll a run until it succeeds or fails; returns the run. Raises StackError on timeout."""
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            time.sleep(poll)
        raise StackError(
            f"{dag_id} run {run_id} still {run.get('state')!r} after {timeout:.0f}s; "
            f"task states: {self.task_states(dag_id, run_id)}"
        )

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """task id -> state of a run's task instances."""
        body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def task_log_tails(self, dag_id: str, run_id: str, lines: int = 30) -> Iterator[tuple[Path, str]]:
        """The end of every task log of a run (for failure messages)."""
        root = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for path in sorted(root.glob("task_id=*/attempt=*.log")):
            yield path, log_tail(path, lines)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _create_mlflow_store(settings: Settings) -> None:
    """Create a local MLflow store's tables now: tasks of several DAGs creating them at once
    leave a half-migrated SQLite store that every later connection fails on."""
    if settings.tracking_uri.startswith("sqlite:"):
        from mlflow import MlflowClient

        (settings.data_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        MlflowClient(settings.tracking_uri).search_experiments(max_results=1)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
