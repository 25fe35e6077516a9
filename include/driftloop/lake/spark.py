"""The Spark session factory: one Delta-enabled session per process, configured from settings.

A cold JVM costs 10-40 s here, so every caller (feature jobs, tests) shares the same session, and
with ``spark_remote`` set that session is a Spark Connect client of a server that stays warm
between tasks (:mod:`driftloop.lake.spark_connect`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from driftloop.config import Settings, get_settings
from driftloop.log import get_logger

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = get_logger(__name__)

_lock = threading.Lock()
_session: SparkSession | None = None

DEFAULT_CONNECT_PORT = 15002  # Spark Connect's own default
CONNECT_PROBE_TIMEOUT_S = 5.0

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


def _build_session(settings: Settings, extra_conf: dict[str, str] | None = None) -> SparkSession:
    """A classic session with its JVM in this process; ``extra_conf`` adds settings (a server's)."""
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
    for key, value in (extra_conf or {}).items():
        builder = builder.config(key, value)
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


def _connect_session(settings: Settings) -> SparkSession:
    """A Spark Connect client session of the server at ``settings.spark_remote``."""
    from pyspark.sql import SparkSession

    assert settings.spark_remote is not None
    # the client retries an unreachable server with backoff for minutes: look first, fail at once
    address = urlparse(settings.spark_remote)
    host, port = address.hostname or "localhost", address.port or DEFAULT_CONNECT_PORT
    try:
        socket.create_connection((host, port), timeout=CONNECT_PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise SparkSetupError(
            f"no Spark Connect server listens at {settings.spark_remote} ({error}): start one with "
            "`driftloop spark-server` (the embedded stack starts its own), or unset "
            "DRIFTLOOP_SPARK_REMOTE to run Spark in this process"
        ) from error
    try:
        session = SparkSession.builder.remote(settings.spark_remote).getOrCreate()
        # the first call opens the channel: an unreachable server fails here, not mid-job
        session.conf.get("spark.sql.session.timeZone")
    except Exception as error:
        raise SparkSetupError(
            f"the Spark Connect server at {settings.spark_remote} did not answer "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); its "
            "log says why (the embedded stack's is <airflow home>/logs-stack/spark-connect.log)"
        ) from error
    # the server releases a session's temp views and settings when its client says goodbye
    atexit.register(stop_spark)
    return session


def _usable(session: SparkSession) -> bool:
    """False once the session is stopped: its JVM gone, or its channel to the server closed."""
    if type(session).__module__.startswith("pyspark.sql.connect"):
        return not session.is_stopped
    return session.sparkContext._jsc is not None


def get_spark(settings: Settings | None = None) -> SparkSession:
    """The process-wide Delta-enabled Spark session, created on first use.

    With ``spark_remote`` set it is a Spark Connect session of that long-lived server (its JVM
    is already warm: no start-up, Delta logs and JIT-compiled code cached); otherwise a local
    session on ``spark_master`` whose JVM runs in this process.
    """
    global _session
    with _lock:
        if _session is None or not _usable(_session):
            settings = settings or get_settings()
            if settings.spark_remote:
                log.info("spark.connecting", remote=settings.spark_remote)
                _session = _connect_session(settings)
                log.info("spark.connected", remote=settings.spark_remote, version=_session.version)
            else:
                log.info("spark.starting", master=settings.spark_master)
                _session = _build_session(settings)
                log.info("spark.started", version=_session.version)
        return _session


def stop_spark() -> None:
    """Stop the process-wide session (tests and CLI exit); a Connect session only lets go of the server."""
    global _session
    with _lock:
        if _session is not None:
            with contextlib.suppress(Exception):  # a server already gone has nothing to release
                _session.stop()
            _session = None
