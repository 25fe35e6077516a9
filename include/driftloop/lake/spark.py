"""The Spark session factory: one Delta-enabled session per process, configured from settings.

A cold JVM costs 10-40 s here, so every caller (feature jobs, tests) shares the same session.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.config import Settings, get_settings
from driftloop.log import get_logger

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = get_logger(__name__)

_lock = threading.Lock()
_session: SparkSession | None = None

_DELTA_JARS = ("delta-spark_", "delta-storage-", "delta-kernel-", "unitycatalog-")
_S3A_JARS = ("hadoop-aws-", "bundle-", "analyticsaccelerator-s3-", "wildfly-openssl-")


class SparkSetupError(RuntimeError):
    """Spark cannot start the way driftloop needs it; the message says how to fix it."""


def spark_jars(settings: Settings) -> list[Path]:
    """The jars this profile needs: Delta always, hadoop-aws and the AWS SDK for s3a:// lakes."""
    folder = settings.spark_jars_dir
    jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    wanted = _DELTA_JARS + (_S3A_JARS if settings.lake_uri.startswith("s3a://") else ())
    chosen = [j for j in jars if j.name.startswith(wanted)]
    if not any(j.name.startswith("delta-spark_") for j in chosen):
        raise SparkSetupError(
            f"no Delta Lake jars in {folder}: run `make setup` (it fetches them with Maven), "
            "or point DRIFTLOOP_SPARK_JARS_DIR at a folder that has them"
        )
    return chosen


def _build_session(settings: Settings) -> SparkSession:
    from pyspark.sql import SparkSession

    # bind the driver before the JVM starts: to loopback here (servers listen on 127.0.0.1 only),
    # to its pod IP in a driver pod
    os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_driver_host)
    jars = [str(j) for j in spark_jars(settings)]
    if not settings.spark_master.startswith("local"):
        # executors run the same image: local: makes each read its own copy instead of fetching
        # the jars (the AWS SDK bundle alone is 690 MB) from the driver
        jars = [f"local://{j}" for j in jars]
    builder = (
        SparkSession.builder.appName("driftloop")
        .master(settings.spark_master)
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.databricks.delta.snapshotPartitions", str(settings.spark_delta_snapshot_partitions))
        # loopback on this machine (and CI), which bind servers to 127.0.0.1 only
        .config("spark.driver.host", settings.spark_driver_host)
        .config("spark.driver.bindAddress", settings.spark_driver_host)
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
        .config("spark.sql.warehouse.dir", str(settings.data_dir / "spark-warehouse"))
        .config(
            "spark.driver.extraJavaOptions",
            f"-Dderby.system.home={settings.data_dir / 'derby'} -Dlog4j2.level=warn",
        )
    )
    if settings.lake_uri.startswith("s3a://"):
        builder = builder.config(
            "spark.hadoop.fs.s3a.aws.credentials.provider",
            "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider",
        )
        if settings.s3_endpoint_url:
            builder = (
                builder.config("spark.hadoop.fs.s3a.endpoint", settings.s3_endpoint_url)
                .config("spark.hadoop.fs.s3a.path.style.access", "true")
                .config("spark.hadoop.fs.s3a.endpoint.region", "us-east-1")
            )
    # py4j logs every connection it closes at INFO, even from finalizers at interpreter exit
    logging.getLogger("py4j").setLevel(logging.WARNING)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def get_spark(settings: Settings | None = None) -> SparkSession:
    """The process-wide Delta-enabled Spark session, created on first use."""
    global _session
    with _lock:
        if _session is None or _session.sparkContext._jsc is None:
            settings = settings or get_settings()
            log.info("spark.starting", master=settings.spark_master)
            _session = _build_session(settings)
            log.info("spark.started", version=_session.version)
        return _session


def stop_spark() -> None:
    """Stop the process-wide session (tests and CLI exit)."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None
