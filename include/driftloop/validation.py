"""Row-level validation of landing batches against the dataset contract, with pandera.

Every row ends up either valid or with a human-readable reason: nothing is silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from driftloop.dataset import ColumnSpec, DatasetSpec

_PANDAS_DTYPES = {
    "string": "str",
    "double": "float64",
    "long": "int64",
    "boolean": "bool",
    "timestamp": pd.DatetimeTZDtype("ns", "UTC"),
}


@dataclass(frozen=True)
class ValidationOutcome:
    """A batch split into typed valid rows and invalid rows with reasons (same row labels as input)."""

    valid: pd.DataFrame
    invalid: pd.DataFrame
    reasons: pd.Series  # index: invalid row labels; value: "; "-joined reasons

    @property
    def rows_in(self) -> int:
        return len(self.valid) + len(self.invalid)


def _checks(col: ColumnSpec, reference_time: datetime | None) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if col.type in ("double", "long"):
        checks.append(pa.Check(lambda s: np.isfinite(s.astype("float64")), name="finite", error="not finite"))
        if col.min is not None or col.max is not None:
            lo = col.min if col.min is not None else -np.inf
            hi = col.max if col.max is not None else np.inf
            checks.append(pa.Check.in_range(lo, hi))
    if col.allowed is not None:
        checks.append(pa.Check.isin(list(col.allowed)))
    if col.pattern is not None:
        checks.append(pa.Check.str_matches(col.pattern))
    if col.type == "timestamp" and reference_time is not None:
        checks.append(
            pa.Check.le(
                pd.Timestamp(reference_time),
                name="not_in_future",
                error="in the future (later than the batch landed, plus tolerance)",
            )
        )
    return checks


def build_schema(
    columns: list[ColumnSpec], unique: list[str], reference_time: datetime | None
) -> pa.DataFrameSchema:
    """A pandera schema: declared types (coerced), value rules, key uniqueness within the batch.

    ``reference_time`` is the latest acceptable timestamp (batch time plus tolerance): events
    stamped after it are rejected as coming from the future (clock skew, unit bugs).
    """
    return pa.DataFrameSchema(
        {
            c.name: pa.Column(
                _PANDAS_DTYPES[c.type],
                nullable=c.nullable,
                coerce=True,
                checks=_checks(c, reference_time),
            )
            for c in columns
        },
        unique=unique or None,
        report_duplicates="exclude_first",
        strict=False,
        coerce=True,
    )


def _normalise_timestamps(frame: pd.DataFrame, columns: list[ColumnSpec]) -> pd.DataFrame:
    """Parse timestamp columns to UTC row by row: unparseable values become NaT (then rejected)."""
    frame = frame.copy()
    for col in columns:
        if col.type == "timestamp" and col.name in frame:
            values = frame[col.name]
            if not isinstance(values.dtype, pd.DatetimeTZDtype):
                frame[col.name] = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
            else:
                frame[col.name] = values.dt.tz_convert("UTC")
    return frame


def validate_frame(
    frame: pd.DataFrame,
    columns: list[ColumnSpec],
    unique: list[str],
    reference_time: datetime | None,
) -> ValidationOutcome:
    """Validate ``frame``; every row is either in ``valid`` (typed) or in ``invalid`` with reasons."""
    raw = frame
    frame = _normalise_timestamps(frame, columns)
    schema = build_schema(columns, unique, reference_time)
    missing = [c.name for c in columns if c.name not in frame.columns]
    if missing:
        reason = "missing column(s): " + ", ".join(missing)
        return ValidationOutcome(
            valid=_empty(columns), invalid=raw, reasons=pd.Series(reason, index=raw.index, dtype=object)
        )
    if frame.empty:
        return ValidationOutcome(valid=_empty(columns), invalid=raw, reasons=pd.Series(dtype=object))
    reasons: dict[object, set[str]] = {}
    remaining = frame
    # A value that cannot be coerced leaves its whole column untyped, so that column's value
    # checks cannot run in the same pass; a second pass without the uncoercible rows gives
    # every other row its complete list of reasons.
    for _ in range(2):
        try:
            schema.validate(remaining, lazy=True)
            break
        except SchemaErrors as errors:
            cases = errors.failure_cases
        row_cases = cases[cases["index"].notna()]
        uncoercible = set()
        for index, column, check in row_cases[["index", "column", "check"]].itertuples(index=False):
            described = _describe_check(check)
            reasons.setdefault(index, set()).add(f"{column or 'row'}: {described}")
            if described.startswith("wrong type"):
                uncoercible.add(index)
        if not uncoercible:
            break
        remaining = remaining.loc[~remaining.index.isin(uncoercible)]
    bad = raw.index.isin(list(reasons))
    # the final pass types the good rows and raises if a failure was not attributed to a row
    valid = schema.validate(frame.loc[~bad])
    reason_text = pd.Series(
        ["; ".join(sorted(reasons[i])) for i in raw.index[bad]], index=raw.index[bad], dtype=object
    )
    return ValidationOutcome(valid=valid, invalid=raw.loc[bad], reasons=reason_text)


def _empty(columns: list[ColumnSpec]) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype=_PANDAS_DTYPES[c.type]) for c in columns})


def _describe_check(check: object) -> str:
    text = str(check)
    if text in ("not_nullable", "field_uniqueness", "multiple_fields_uniqueness"):
        return {
            "not_nullable": "null value",
            "field_uniqueness": "duplicate in batch",
            "multiple_fields_uniqueness": "duplicate in batch",
        }[text]
    if text.startswith(("coerce_dtype(", "dtype(")):
        return f"wrong type (expected {text.split('(', 1)[1].rstrip(')')})"
    return text


def event_columns(spec: DatasetSpec) -> list[ColumnSpec]:
    """Declared columns of an event batch."""
    return list(spec.columns)


def label_columns(spec: DatasetSpec) -> list[ColumnSpec]:
    """Columns of a label batch: which event, its 0/1 label, and when the label became known."""
    return [
        spec.column(spec.event_id),
        ColumnSpec(name=spec.label, type="long", min=0, max=1),
        ColumnSpec(name=spec.label_time, type="timestamp"),
    ]
