"""The model registry: versions with lineage in MLflow, aliases, and a durable alias history.

MLflow keeps only where an alias points now; every move (which version, from what, when, by
which run, why) is also appended to the lake's ``alias_history`` table, and decisions that
move aliases run under one registry-wide lock so concurrent retrains cannot both win.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from driftloop.config import Settings
from driftloop.lake import tables
from driftloop.log import get_logger

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = get_logger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
ALIAS_HISTORY = "alias_history"
RUN_KEY_TAG = "driftloop.run_key"
STATUS_TAG = "driftloop.status"

HISTORY_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("alias", pa.string()),
        ("version", pa.string()),
        ("previous_version", pa.string()),
        ("moved_at", pa.timestamp("us", tz="UTC")),
        ("actor", pa.string()),
        ("run_key", pa.string()),
        ("reason", pa.string()),
    ]
)


class RegistryLockTimeout(TimeoutError):
    """Another process held the registry lock for too long."""


@contextmanager
def registry_lock(settings: Settings, timeout_s: float = 300.0) -> Iterator[None]:
    """Serialise alias decisions: a PostgreSQL advisory lock across hosts, a file lock on one machine."""
    if settings.registry_lock_dsn:
        import sqlalchemy as sa

        key = int.from_bytes(
            hashlib.sha256(settings.registered_model.encode()).digest()[:8], "big", signed=True
        )
        engine = sa.create_engine(settings.registry_lock_dsn, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout_s
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() > deadline:
                    raise RegistryLockTimeout(
                        f"registry lock for {settings.registered_model} busy for {timeout_s}s"
                    )
                time.sleep(0.2)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        engine.dispose()
    else:
        from filelock import FileLock, Timeout

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(settings.data_dir / f".registry-{settings.registered_model}.lock"))
        try:
            with lock.acquire(timeout=timeout_s):
                yield
        except Timeout as exc:
            raise RegistryLockTimeout(
                f"registry lock for {settings.registered_model} busy for {timeout_s}s"
            ) from exc


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move."""

    model: str
    alias: str
    version: str | None
    previous_version: str | None
    moved_at: datetime
    actor: str
    run_key: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self) | {"moved_at": self.moved_at.isoformat()}


class Registry:
    """The use case's registered model in MLflow, with its aliases and their history."""

    def __init__(self, settings: Settings) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        self.name = settings.registered_model
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)

    def ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.name, description="driftloop fraud model: aliases champion, challenger, previous"
                )
            except MlflowException as exc:  # created concurrently by another run
                if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                    raise

    def find_version(self, run_key: str) -> ModelVersion | None:
        """The version registered by a training run (so a retried registration is a no-op)."""
        found = self.client.search_model_versions(
            f"name = '{self.name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'"
        )
        return min(found, key=lambda v: int(v.version)) if found else None

    def register(
        self, model_uri: str, run_id: str, run_key: str, tags: dict[str, str], model_id: str | None = None
    ) -> ModelVersion:
        """Register ``model_uri`` once per run key, with the lineage tags on the version.

        Check and create happen under the registry lock, so concurrent retries of one run
        cannot both register, and concurrent runs get distinct versions.
        """
        with registry_lock(self.settings):
            existing = self.find_version(run_key)
            if existing is not None:
                log.info("registry.already_registered", version=existing.version, run_key=run_key)
                return existing
            self.ensure_model()
            version = self.client.create_model_version(
                self.name, model_uri, run_id=run_id, tags={**tags, RUN_KEY_TAG: run_key}, model_id=model_id
            )
        log.info("registry.registered", version=version.version, run_key=run_key)
        return version

    def alias_version(self, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def move_alias(
        self, alias: str, version: str | None, *, actor: str, run_key: str, reason: str
    ) -> AliasMove:
        """Point ``alias`` at ``version`` (None removes it) and record the move durably."""
        current = self.alias_version(alias)
        previous = str(current.version) if current else None
        version = None if version is None else str(version)
        if version is None:
            if current is not None:
                self.client.delete_registered_model_alias(self.name, alias)
        else:
            self.client.set_registered_model_alias(self.name, alias, version)
        move = AliasMove(self.name, alias, version, previous, datetime.now(UTC), actor, run_key, reason)
        self._record(move)
        log.info("registry.alias_moved", **move.as_dict())
        return move

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def reject_version(
        self,
        version: str,
        *,
        by: str,
        reasons: list[str] | tuple[str, ...],
        actor: str,
        run_key: str,
        metrics: dict | None = None,
        alias_reason: str = "rejected",
    ) -> None:
        """Tag ``version`` rejected (by which step, why, with which metrics); it stops being challenger.

        Idempotent: a retry sets the same tags and finds the alias already moved.
        """
        challenger = self.alias_version(CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version):
            self.move_alias(CHALLENGER, None, actor=actor, run_key=run_key, reason=alias_reason)
        self.tag_version(
            str(version),
            {
                STATUS_TAG: "rejected",
                "driftloop.rejected_by": by,
                "driftloop.rejection": "; ".join(reasons)[:5000],
                "driftloop.rejection_metrics": json.dumps(metrics or {}, default=str)[:5000],
            },
        )

    def _record(self, move: AliasMove) -> None:
        from deltalake import write_deltalake

        row = pa.Table.from_pylist([asdict(move)], schema=HISTORY_SCHEMA)
        write_deltalake(
            tables.delta_rs_uri(self.settings.table_uri(ALIAS_HISTORY)),
            row,
            mode="append",
            storage_options=tables.storage_options(self.settings),
        )

    def history(self, limit: int = 100) -> list[AliasMove]:
        """Alias moves of this model, newest first."""
        table = tables.read_table(self.settings, ALIAS_HISTORY)
        if table is None:
            return []
        rows = table.to_pylist()
        rows = sorted((r for r in rows if r["model"] == self.name), key=lambda r: r["moved_at"], reverse=True)
        return [AliasMove(**r) for r in rows[:limit]]
