"""Ingestion of landing batches: validate, append good rows to bronze, quarantine the rest.

Invariant (tested): for every batch, rows in = rows in bronze + rows in quarantine. A file
that cannot be read at all is moved to the landing quarantine with a reason file, never deleted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from driftloop.config import Settings
from driftloop.dataset import ColumnSpec, DatasetSpec
from driftloop.lake import tables
from driftloop.log import get_logger
from driftloop.validation import event_columns, label_columns, validate_frame

log = get_logger(__name__)

BatchKind = Literal["events", "labels"]
KINDS: tuple[BatchKind, ...] = ("events", "labels")
PROCESSED_DIR = "_processed"
QUARANTINE_DIR = "_quarantine"
_ID_CHUNK = 5_000  # event ids per lookup query against bronze
_READERS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}

_ARROW_TYPES = {
    "string": pa.string(),
    "double": pa.float64(),
    "long": pa.int64(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
QUARANTINE_SCHEMA = pa.schema(
    [
        ("batch_id", pa.string()),
        ("kind", pa.string()),
        ("source_file", pa.string()),
        ("row_number", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)


class UnreadableBatchError(ValueError):
    """The landing file is not a readable batch of its declared format."""


@dataclass(frozen=True)
class LandingFile:
    """One landed batch file."""

    kind: BatchKind
    path: str  # filesystem path as pyarrow addresses it
    landed_at: datetime

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def batch_id(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class BatchReport:
    """What ingesting one batch did; small enough for XCom and Asset event extras."""

    batch_id: str
    kind: BatchKind
    source_file: str
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    bronze_version: int
    quarantine_version: int | None
    already_ingested: bool
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UnreadableFile:
    """A file moved to the landing quarantine because it could not be read."""

    source_file: str
    quarantined_to: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def arrow_schema(columns: list[ColumnSpec]) -> pa.Schema:
    """Arrow schema of the declared columns (timestamps as UTC microseconds, as Delta stores them)."""
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.type], nullable=True) for c in columns])


def landing_filesystem(settings: Settings) -> tuple[pafs.FileSystem, str]:
    """The landing area's filesystem (local or S3) and its root path on it."""
    uri = tables.delta_rs_uri(settings.landing)
    if "://" not in uri:
        pafs.LocalFileSystem().create_dir(uri, recursive=True)
        return pafs.LocalFileSystem(), uri
    if uri.startswith("s3://") and settings.s3_endpoint_url:
        fs = pafs.S3FileSystem(endpoint_override=settings.s3_endpoint_url, scheme="http")
        return fs, uri.removeprefix("s3://")
    return pafs.FileSystem.from_uri(uri)


def list_landing_files(settings: Settings, kinds: tuple[BatchKind, ...] = KINDS) -> list[LandingFile]:
    """Landed batch files not yet processed, oldest first (hidden and temporary files skipped)."""
    fs, root = landing_filesystem(settings)
    found = []
    for kind in kinds:
        selector = pafs.FileSelector(f"{root}/{kind}", allow_not_found=True, recursive=False)
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
                continue
            landed = info.mtime.astimezone(UTC) if info.mtime else datetime.now(UTC)
            found.append(LandingFile(kind=kind, path=info.path, landed_at=landed))
    return sorted(found, key=lambda f: (f.landed_at, f.path))


def read_batch(fs: pafs.FileSystem, path: str) -> pd.DataFrame:
    """Read a Parquet or JSON Lines batch; anything unreadable raises UnreadableBatchError."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    reader = _READERS.get(suffix)
    if reader is None:
        raise UnreadableBatchError(f"unsupported file type {suffix or '(none)'}: use .parquet or .jsonl")
    try:
        with fs.open_input_file(path) as handle:
            if reader == "parquet":
                return pq.read_table(handle).to_pandas()
            # dtype=False keeps values as written; validation does the typing row by row
            return pd.read_json(handle, lines=True, dtype=False, convert_dates=False)
    except (pa.ArrowInvalid, ValueError, OSError) as exc:
        raise UnreadableBatchError(f"{reader} reader failed: {exc}") from exc


def _quarantine_rows(raw: pd.DataFrame, reasons: pd.Series, batch: LandingFile, at: datetime) -> pa.Table:
    positions = raw.index.get_indexer(reasons.index)
    payloads = raw.loc[reasons.index].to_json(orient="records", lines=True, date_format="iso")
    lines = payloads.splitlines() if len(reasons) else []
    return pa.Table.from_pydict(
        {
            "batch_id": [batch.batch_id] * len(reasons),
            "kind": [batch.kind] * len(reasons),
            "source_file": [batch.path] * len(reasons),
            "row_number": positions.astype("int64"),
            "reason": reasons.astype(str).tolist(),
            "raw": lines,
            "quarantined_at": [at] * len(reasons),
        },
        schema=QUARANTINE_SCHEMA,
    )


def _already_in_bronze(
    settings: Settings, spec: DatasetSpec, batch: pd.DataFrame, batch_id: str
) -> pd.Series:
    """Which rows' event ids an earlier, different batch already put in bronze."""
    ids = batch[spec.event_id]
    table = tables.open_table(settings, tables.BRONZE_EVENTS)
    if table is None or batch.empty:
        return pd.Series(False, index=batch.index)
    unique = ids.astype(str).unique().tolist()
    quoted_batch = _sql_string(batch_id)
    found: set[str] = set()
    for start in range(0, len(unique), _ID_CHUNK):
        chunk = ", ".join(_sql_string(i) for i in unique[start : start + _ID_CHUNK])
        rows = tables.query(
            table,
            f'SELECT "{spec.event_id}" AS id FROM t '
            f'WHERE "_batch_id" <> {quoted_batch} AND "{spec.event_id}" IN ({chunk})',
        )
        found.update(rows.column("id").to_pylist())
    return ids.isin(found)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ingest_batch(
    settings: Settings,
    spec: DatasetSpec,
    batch: LandingFile,
    reference_time: datetime | None = None,
) -> BatchReport:
    """Validate one landed batch and write it to bronze and quarantine, exactly once.

    ``reference_time`` bounds event times (default: when the file landed, plus tolerance).
    """
    fs, _ = landing_filesystem(settings)
    raw = read_batch(fs, batch.path).reset_index(drop=True)
    horizon = (reference_time or batch.landed_at) + settings.future_event_tolerance
    columns = event_columns(spec) if batch.kind == "events" else label_columns(spec)
    outcome = validate_frame(raw, columns, [spec.event_id], horizon)

    valid, reasons = outcome.valid, outcome.reasons
    if batch.kind == "events":
        duplicate = _already_in_bronze(settings, spec, valid, batch.batch_id)
        if duplicate.any():
            reasons = pd.concat(
                [
                    reasons,
                    pd.Series(
                        f"{spec.event_id}: already ingested by an earlier batch", index=valid.index[duplicate]
                    ),
                ]
            )
            valid = valid.loc[~duplicate]
    reasons = reasons.loc[raw.index[raw.index.isin(reasons.index)]]

    bronze_rows = pa.Table.from_pandas(
        valid[[c.name for c in columns]], schema=arrow_schema(columns), preserve_index=False
    )
    bronze_rows = (
        bronze_rows.append_column("_batch_id", pa.array([batch.batch_id] * len(valid), pa.string()))
        .append_column("_source_file", pa.array([batch.path] * len(valid), pa.string()))
        .append_column("_ingested_at", pa.array([batch.landed_at] * len(valid), pa.timestamp("us", tz="UTC")))
    )
    bronze_name = tables.BRONZE_EVENTS if batch.kind == "events" else tables.BRONZE_LABELS
    app_id = f"driftloop.ingest.{batch.kind}.{batch.batch_id}"
    bronze = tables.idempotent_append(settings, bronze_name, bronze_rows, app_id)
    quarantine_version = None
    if len(reasons):
        rows = _quarantine_rows(raw, reasons, batch, batch.landed_at)
        quarantine_version = tables.idempotent_append(settings, tables.QUARANTINE, rows, app_id).version

    report = BatchReport(
        batch_id=batch.batch_id,
        kind=batch.kind,
        source_file=batch.path,
        rows_in=len(raw),
        rows_valid=len(valid),
        rows_quarantined=len(reasons),
        bronze_version=bronze.version,
        quarantine_version=quarantine_version,
        already_ingested=not bronze.written,
        reasons=_reason_counts(reasons),
    )
    log.info("ingest.batch", **{k: v for k, v in report.as_dict().items() if k != "reasons"})
    return report


def _reason_counts(reasons: pd.Series) -> dict[str, int]:
    """Rows per individual reason ("amount: null value"), for reports and Asset extras."""
    exploded = reasons.astype(str).str.split("; ").explode()
    return {str(k): int(v) for k, v in exploded.value_counts().items()}


def _move(fs: pafs.FileSystem, source: str, folder: str) -> str:
    fs.create_dir(folder, recursive=True)
    target = f"{folder}/{source.rsplit('/', 1)[-1]}"
    fs.move(source, target)
    return target


def mark_processed(settings: Settings, batch: LandingFile) -> str:
    """Move an ingested file out of the landing area (kept, for replays and audits)."""
    fs, root = landing_filesystem(settings)
    return _move(fs, batch.path, f"{root}/{PROCESSED_DIR}/{batch.kind}")


def quarantine_file(settings: Settings, batch: LandingFile, reason: str) -> UnreadableFile:
    """Move an unreadable file to the landing quarantine next to a JSON file saying why."""
    fs, root = landing_filesystem(settings)
    folder = f"{root}/{QUARANTINE_DIR}/{batch.kind}"
    target = _move(fs, batch.path, folder)
    with fs.open_output_stream(f"{target}.reason.json") as out:
        out.write(
            json.dumps(
                {
                    "source_file": batch.path,
                    "batch_id": batch.batch_id,
                    "reason": reason,
                    "landed_at": batch.landed_at.isoformat(),
                },
                indent=2,
            ).encode()
        )
    log.warning("ingest.unreadable_file", source=batch.path, quarantined_to=target, reason=reason)
    return UnreadableFile(source_file=batch.path, quarantined_to=target, reason=reason)


@dataclass(frozen=True)
class IngestSummary:
    """Everything one ingest pass did."""

    batches: list[BatchReport]
    unreadable: list[UnreadableFile]

    @property
    def rows_in(self) -> int:
        return sum(b.rows_in for b in self.batches)

    def describe(self) -> str:
        """One line for logs and skip messages."""
        return (
            f"{len(self.batches)} batch(es), {self.rows_in} row(s) in, "
            f"{sum(b.rows_quarantined for b in self.batches)} quarantined, "
            f"{len(self.unreadable)} unreadable file(s)"
        )

    def bronze_event_extra(self, table_uri: str) -> dict | None:
        """The bronze Asset event's payload, or None when no new event rows were written."""
        written = [b for b in self.batches if b.kind == "events" and not b.already_ingested]
        if not written:
            return None
        keys = ("batch_id", "rows_in", "rows_valid", "rows_quarantined", "bronze_version")
        return {
            "table_uri": table_uri,
            "bronze_version": max(b.bronze_version for b in written),
            "batches": [{k: getattr(b, k) for k in keys} for b in written],
        }

    def as_dict(self) -> dict:
        return {
            "batches": [b.as_dict() for b in self.batches],
            "unreadable": [u.as_dict() for u in self.unreadable],
            "rows_in": self.rows_in,
            "rows_valid": sum(b.rows_valid for b in self.batches),
            "rows_quarantined": sum(b.rows_quarantined for b in self.batches),
        }


def ingest_landing(
    settings: Settings, spec: DatasetSpec, reference_time: datetime | None = None, limit: int | None = None
) -> IngestSummary:
    """Ingest every landed file (events before labels of the same moment), oldest first."""
    batches, unreadable = [], []
    files = list_landing_files(settings)[:limit]
    for number, landing_file in enumerate(files, start=1):
        log.info("ingest.progress", file=landing_file.name, kind=landing_file.kind, n=number, of=len(files))
        try:
            batches.append(ingest_batch(settings, spec, landing_file, reference_time))
        except UnreadableBatchError as exc:
            unreadable.append(quarantine_file(settings, landing_file, str(exc)))
            continue
        mark_processed(settings, landing_file)
    return IngestSummary(batches=batches, unreadable=unreadable)
