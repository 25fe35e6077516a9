"""The dataset contract: which columns a source has, their types and rules, and the features.

Everything downstream (validation, bronze schema, feature job, training set) reads names from
here, so any binary-classification source that matches a declared spec flows through unchanged.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ColumnType = Literal["string", "double", "long", "boolean", "timestamp"]
Aggregation = Literal["count", "sum", "mean", "min", "max"]

_WINDOW = re.compile(r"^(\d+)([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


class DatasetSpecError(ValueError):
    """The dataset contract is inconsistent; the message names the offending field."""


def parse_window(text: str) -> timedelta:
    """Turn '15m', '1h' or '7d' into a timedelta."""
    match = _WINDOW.match(text)
    if not match:
        raise DatasetSpecError(f"window {text!r} must look like 15m, 1h or 7d")
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


class ColumnSpec(BaseModel):
    """One source column with its type and value rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: ColumnType
    nullable: bool = False
    min: float | None = Field(None, description="Smallest allowed value (numeric columns).")
    max: float | None = Field(None, description="Largest allowed value (numeric columns).")
    allowed: tuple[str, ...] | None = Field(None, description="Closed set of values (string columns).")
    pattern: str | None = Field(None, description="Regular expression every value must match.")


class WindowFeatureSpec(BaseModel):
    """Rolling aggregates of one column per entity, over trailing event-time windows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entity: str
    column: str
    windows: tuple[str, ...]
    aggregations: tuple[Aggregation, ...]

    @field_validator("windows")
    @classmethod
    def _windows_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for window in value:
            parse_window(window)
        return value

    def feature_names(self) -> list[tuple[str, Aggregation, str]]:
        """(feature name, aggregation, window) for every output column."""
        out = []
        for window in self.windows:
            for agg in self.aggregations:
                name = (
                    f"{self.entity}_count_{window}"
                    if agg == "count"
                    else f"{self.entity}_{self.column}_{agg}_{window}"
                )
                out.append((name, agg, window))
        return out


class RatioFeatureSpec(BaseModel):
    """numerator / denominator, null when the denominator is null or zero."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    numerator: str
    denominator: str


class FeatureSpec(BaseModel):
    """What the feature job computes and what the model sees."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passthrough: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    windows: tuple[WindowFeatureSpec, ...] = ()
    ratios: tuple[RatioFeatureSpec, ...] = ()


class DatasetSpec(BaseModel):
    """A declared binary-classification event source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    event_id: str
    event_time: str
    label: str
    label_time: str = "label_time"
    entities: tuple[str, ...]
    columns: tuple[ColumnSpec, ...]
    features: FeatureSpec

    @model_validator(mode="after")
    def _names_are_declared(self) -> DatasetSpec:
        declared = {c.name for c in self.columns}
        problems = []
        for role, name in [("event_id", self.event_id), ("event_time", self.event_time)]:
            if name not in declared:
                problems.append(f"{role} column {name!r} is not in columns")
        if self.event_time in declared and self.column(self.event_time).type != "timestamp":
            problems.append(f"event_time column {self.event_time!r} must have type timestamp")
        problems += [f"entity {e!r} is not in columns" for e in self.entities if e not in declared]
        problems += [
            f"feature column {c!r} is not in columns"
            for c in (*self.features.passthrough, *self.features.categorical)
            if c not in declared
        ]
        for spec in self.features.windows:
            if spec.entity not in self.entities:
                problems.append(f"window feature entity {spec.entity!r} is not an entity")
            if spec.column not in declared:
                problems.append(f"window feature column {spec.column!r} is not in columns")
        known = set(self.features.passthrough) | set(self.window_feature_names)
        for ratio in self.features.ratios:
            for part in (ratio.numerator, ratio.denominator):
                if part not in known:
                    problems.append(f"ratio {ratio.name!r} uses unknown feature {part!r}")
        if problems:
            raise ValueError("inconsistent: " + "; ".join(dict.fromkeys(problems)))
        return self

    def column(self, name: str) -> ColumnSpec:
        """The declared column called ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def window_feature_names(self) -> list[str]:
        return [name for spec in self.features.windows for name, _, _ in spec.feature_names()]

    @property
    def model_features(self) -> list[str]:
        """Every column the model is trained on, in a stable order."""
        return [
            *self.features.passthrough,
            *self.window_feature_names,
            *(r.name for r in self.features.ratios),
        ]

    @property
    def max_window(self) -> timedelta:
        """The longest trailing window: how much history a feature computation needs."""
        windows = [parse_window(w) for spec in self.features.windows for w in spec.windows]
        return max(windows, default=timedelta(0))


def load_dataset_spec(path: Path | None = None) -> DatasetSpec:
    """Read a spec from YAML; ``None`` gives the embedded transactions spec."""
    if path is None:
        text = resources.files("driftloop.datasets").joinpath("transactions.yaml").read_text()
    else:
        try:
            text = Path(path).read_text()
        except FileNotFoundError as exc:
            raise DatasetSpecError(f"dataset spec {path} does not exist (DRIFTLOOP_DATASET_FILE)") from exc
    try:
        return DatasetSpec.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise DatasetSpecError(
            f"dataset spec {path or 'transactions (embedded)'} is invalid: {problems}"
        ) from None


@lru_cache(maxsize=4)
def _cached_spec(path: Path | None) -> DatasetSpec:
    return load_dataset_spec(path)


def get_dataset_spec() -> DatasetSpec:
    """The spec named by the settings, loaded once per process."""
    from driftloop.config import get_settings

    return _cached_spec(get_settings().dataset_file)
