"""Typed settings for driftloop: one object, read from ``DRIFTLOOP_*`` environment variables.

Settings are cached per process and have no side effects at import; secrets never live here
(object-store credentials come from the standard AWS environment or an Airflow Connection).
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["local", "kubernetes"]

# The repository root when the package is installed in editable mode from a checkout; a
# packaged install (Docker image) sets DRIFTLOOP_SPARK_JARS_DIR explicitly instead.
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Everything that differs between runs, places and profiles."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", extra="ignore", frozen=True)

    profile: Profile = Field("local", description="Where driftloop runs: one machine or Kubernetes.")
    data_dir: Path = Field(
        _CHECKOUT_ROOT / ".data",
        description="Local working folder (lake, MLflow store, reports) in the local profile.",
    )
    lake_root: str = Field(
        "",
        description="Root URI of the lake: a folder, or s3a://bucket/prefix. Empty: <data_dir>/lake.",
    )
    landing_uri: str = Field(
        "",
        description="Where source batches land (events/ and labels/ below it). Empty: <lake_root>/landing.",
    )
    dataset_file: Path | None = Field(
        None, description="YAML file declaring the dataset contract. None: the embedded transactions spec."
    )

    spark_master: str = Field("local[*]", description="Spark master URL.")
    spark_jars_dir: Path = Field(
        _CHECKOUT_ROOT / ".spark-jars",
        description="Folder with the Delta (and hadoop-aws) jars fetched by `make setup`.",
    )
    spark_driver_memory: str = Field("4g", description="spark.driver.memory for local sessions.")
    spark_shuffle_partitions: int = Field(
        8, ge=1, description="Initial shuffle partitions; AQE coalesces them further."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (e.g. a local object store); None: AWS."
    )

    future_event_tolerance: timedelta = Field(
        timedelta(minutes=5),
        description="How far past the batch's reference time an event_time may lie before it is rejected.",
    )
    landing_poll_seconds: float = Field(
        5.0, gt=0, description="How often the landing watcher lists the landing area."
    )

    @model_validator(mode="after")
    def _require_object_store_in_kubernetes(self) -> Settings:
        if self.profile == "kubernetes" and not self.lake_uri.startswith("s3a://"):
            raise ValueError(
                "profile 'kubernetes' needs DRIFTLOOP_LAKE_ROOT=s3a://<bucket>/<prefix>: "
                "pods do not share a local folder."
            )
        return self

    @property
    def lake_uri(self) -> str:
        """Root of the lake with the default applied."""
        return (self.lake_root or str(self.data_dir / "lake")).rstrip("/")

    @property
    def landing(self) -> str:
        """Root of the landing area with the default applied."""
        return (self.landing_uri or f"{self.lake_uri}/landing").rstrip("/")

    def table_uri(self, name: str) -> str:
        """URI of a Delta table in the lake, as Spark addresses it (s3a:// or a path)."""
        return f"{self.lake_uri}/tables/{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
