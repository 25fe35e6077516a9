"""Typed settings for driftloop: one object, read from ``DRIFTLOOP_*`` environment variables.

Settings are cached per process and have no side effects at import; secrets never live here
(object-store credentials come from the standard AWS environment or an Airflow Connection).
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["local", "kubernetes"]
Metric = Literal["pr_auc", "recall_at_fpr"]

# The repository root when the package is installed in editable mode from a checkout; a
# packaged install (Docker image) sets DRIFTLOOP_SPARK_JARS_DIR explicitly instead.
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


class TrainingSettings(BaseModel):
    """How a retrain tunes and how much data it needs (DRIFTLOOP_TRAINING__*)."""

    model_config = ConfigDict(frozen=True)

    n_trials: int = Field(20, ge=1, le=500, description="Optuna trials per study unless a run overrides it.")
    timeout_minutes: float = Field(10.0, gt=0, description="Wall-clock budget of one study.")
    metric: Metric = Field("pr_auc", description="What the study maximises on the validation split.")
    pruning: bool = Field(True, description="Stop hopeless trials early (median pruner on boosting rounds).")
    max_boost_rounds: int = Field(
        400, ge=10, description="Upper bound of LightGBM boosting rounds per trial."
    )
    train_fraction: float = Field(0.7, gt=0, lt=1, description="Oldest share of the time range used to fit.")
    validation_fraction: float = Field(
        0.15, gt=0, lt=1, description="Next share, used to tune and stop early."
    )
    min_rows: int = Field(500, ge=10, description="Fewer labelled events than this: refuse to train.")
    min_positives: int = Field(10, ge=2, description="Fewer positive labels than this: refuse to train.")
    backstop_cron: str | None = Field(
        "0 3 * * *",
        description="Cron of train_model's scheduled backstop retrain (UTC). None (`null`): no scheduled "
        "retrains.",
    )
    retrain_on_features: bool = Field(
        True,
        description="Every new features table version starts train_model. Off: only drift, the daily "
        "backstop and REST calls retrain (the closed-loop demo runs this way).",
    )
    seed: int = Field(42, description="Seed of the sampler and of LightGBM.")
    num_threads: int = Field(
        1,
        ge=1,
        description="LightGBM threads per fit. Raise only on a dedicated worker: OpenMP threads spin-wait, "
        "and on shared cores (LocalExecutor, Spark next door) 2 threads ran 25x slower than 1 here.",
    )


class GateSettings(BaseModel):
    """When a new model may replace the champion (DRIFTLOOP_GATE__*)."""

    model_config = ConfigDict(frozen=True)

    fpr_budget: float = Field(
        0.01, gt=0, lt=1, description="False-positive rate at which recall is measured."
    )
    min_pr_auc: float = Field(0.2, ge=0, le=1, description="Absolute floor of PR-AUC on the holdout.")
    min_recall_at_fpr: float = Field(
        0.2, ge=0, le=1, description="Absolute floor of recall at the FPR budget."
    )
    margin: float = Field(0.0, ge=-1, le=1, description="PR-AUC a challenger must gain over the champion.")
    recent_window_days: float = Field(
        2.0, gt=0, description="Most recent labelled days evaluated separately."
    )
    recent_tolerance: float = Field(
        0.02, ge=0, le=1, description="PR-AUC a challenger may lose to the champion on the recent window."
    )
    max_calibration_error: float = Field(
        0.05, gt=0, le=1, description="Guardrail: expected calibration error on the holdout."
    )
    latency_budget_ms: float = Field(
        20.0, gt=0, description="Guardrail: p99 single-row scoring latency of the model, in ms."
    )


class ServingSettings(BaseModel):
    """How a model is served (DRIFTLOOP_SERVING__*); the service reads these at start-up."""

    model_config = ConfigDict(frozen=True)

    model_ref: str = Field(
        "champion",
        description="Registry alias or version number the service loads; resolved once at start-up.",
    )
    variant: Literal["stable", "canary"] = Field(
        "stable", description="Which side of a rollout this server is; logged with every prediction."
    )
    host: str = Field("127.0.0.1", description="Interface local servers and the splitter bind to.")
    splitter_port: int = Field(8600, ge=1, le=65535, description="Port of the local traffic splitter.")
    splitter_server_maxconn: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Requests the local splitter (HAProxy) has in flight on one model server at most; "
        "beyond, they wait in HAProxy's queue (up to 10 s, then 503). 0: no limit. A limit bends the "
        "canary weights under load: roundrobin passes over a full server, so a full stable sends its "
        "overflow to the canary (at 4, 90/10 was served 50/50 by 8 and by 32 concurrent clients).",
    )
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes per server.")
    decision_threshold: float = Field(
        0.5, gt=0, lt=1, description="Score at or above which a prediction is a positive decision."
    )
    max_batch_rows: int = Field(1000, ge=1, description="Largest batch one request may carry.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies are refused (413).")
    request_timeout_s: float = Field(
        30.0, gt=0, description="A prediction request still unanswered after this gets a 504 (counted)."
    )
    auth_token: SecretStr | None = Field(
        None, description="Bearer token required on prediction endpoints; None: no auth (loopback only)."
    )
    log_flush_rows: int = Field(
        5000,
        ge=1,
        description="Prediction-log buffer size that forces a write (a Delta commit: about 26 ms of "
        "CPU for 500 rows, 8 ms for 5000, so under load larger batches are far cheaper per row).",
    )
    log_flush_seconds: float = Field(2.0, gt=0, description="Longest a logged prediction waits in memory.")
    log_buffer_limit: int = Field(
        100_000,
        ge=1,
        description="Rows held while the lake is unreachable; beyond, rows are dropped (counted).",
    )
    image: str = Field(
        "ghcr.io/driftloop/serving:0.1.0", description="Serving image (pinned tag) in the kubernetes profile."
    )
    namespace: str = Field("driftloop-serving", description="Namespace of the serving Deployments.")
    gateway: str = Field(
        "driftloop",
        description="Gateway API Gateway the HTTPRoute attaches to (terraform serving-gateway gateway_name).",
    )
    gateway_namespace: str | None = Field(
        None,
        description="Namespace of that Gateway; None: the serving namespace (where Terraform creates it).",
    )
    gateway_listener: str | None = Field(
        "https",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Listener of that Gateway the HTTPRoute attaches to, its parentRef sectionName "
        "(terraform serving-gateway listener.name, default https); null: every listener admitting it.",
    )
    service_account: str = Field(
        "bento",
        description="Service account of the serving pods (terraform k8s-namespaces creates it; its "
        "annotations give the pods a workload identity such as IRSA).",
    )
    workload_identity: bool = Field(
        False,
        description="Serving pods reach S3 through their service account's workload identity (IRSA); "
        "false: with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the driftloop-serving Secret.",
    )
    hostname: str = Field("models.driftloop.internal", description="Host name the HTTPRoute answers.")
    prometheus_url: str | None = Field(
        None,
        description="Prometheus HTTP API the kubernetes target reads serving metrics from "
        "(e.g. http://prometheus.monitoring:9090); None: metrics() refuses with what to set.",
    )


class SparkJobSettings(BaseModel):
    """Where the Spark feature job runs and, on Kubernetes, its pods (DRIFTLOOP_SPARK_JOB__*)."""

    model_config = ConfigDict(frozen=True)

    runner: Literal["local", "kubernetes"] | None = Field(
        None,
        description="local: in the task's process on the local Spark session; kubernetes: a driver "
        "Pod with executor Pods (Spark on Kubernetes, cluster mode). None: follows the profile.",
    )
    image: str = Field(
        "ghcr.io/driftloop/spark-job:0.1.0",
        description="Spark job image (pinned tag) of the driver and executor pods.",
    )
    namespace: str = Field(
        "spark-jobs", description="Namespace of the driver and executor pods (terraform k8s-namespaces)."
    )
    service_account: str = Field(
        "spark-driver",
        description="Service account of the driver (it creates its executors) and of the executors.",
    )
    s3_credentials_secret: str = Field(
        "driftloop-spark",
        description="Secret in the namespace with keys aws-access-key-id and aws-secret-access-key, "
        "read by reference; empty: the service account's workload identity (IRSA) instead.",
    )
    jars_dir: str = Field(
        "/opt/driftloop/spark-jars", description="Folder of the Delta and hadoop-aws jars inside the image."
    )
    driver_cores: int = Field(1, ge=1, le=32, description="CPU request of the driver (the limit is twice).")
    driver_memory_mib: int = Field(
        2048, ge=512, description="Driver JVM heap; the pod gets 40% more for Python and off-heap memory."
    )
    executor_instances: int = Field(2, ge=1, le=200, description="Executor pods of one run.")
    executor_cores: int = Field(2, ge=1, le=32, description="Cores (task slots) of one executor.")
    executor_memory_mib: int = Field(
        4096, ge=512, description="Executor JVM heap; Spark adds its memory overhead to the pod."
    )
    run_as_user: int = Field(
        10001, ge=10000, description="Non-root UID and GID of driver and executors (no host account)."
    )
    timeout_minutes: float = Field(
        120.0, gt=0, description="A driver still unfinished after this long is deleted and the task fails."
    )
    poll_seconds: float = Field(5.0, gt=0, description="How often the task reads the driver pod's state.")


class RolloutSettings(BaseModel):
    """How a canary is stepped and judged (DRIFTLOOP_ROLLOUT__*)."""

    model_config = ConfigDict(frozen=True)

    steps: tuple[int, ...] = Field(
        (10, 50, 100), description="Canary traffic weights in percent, strictly increasing, ending at 100."
    )
    analysis_interval_s: float = Field(60.0, gt=0, description="Length of one analysis window at each step.")
    min_requests: int = Field(
        200, ge=1, description="Canary requests a window needs before it can pass a step."
    )
    max_windows_per_step: int = Field(
        5, ge=1, description="Windows without enough traffic before the step fails (never wait forever)."
    )
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary error rate above this fails a step.")
    max_latency_ratio: float = Field(
        1.5, gt=1, description="Canary p99 latency above this multiple of stable's fails the step."
    )
    latency_slack_ms: float = Field(
        10.0, ge=0, description="p99 differences below this many ms never fail a step (timer noise)."
    )
    min_latency_requests: int = Field(
        300,
        ge=100,
        description="Canary requests before its p99 is judged (300: the p99 rests on its 3 slowest); "
        "earlier a step fails on latency only when more than 1% of this many are already too slow.",
    )
    latency_significance: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="Chance a window fails a canary whose p99 is exactly the limit: a step fails on "
        "latency only on more requests over the limit than such a canary shows with this probability.",
    )
    # measured here, noise-corrected over 20 score bins: two honest retrains 0.0-0.3 per window,
    # a model trained on shuffled labels 1.0-2.0
    max_score_psi: float = Field(
        0.5, gt=0, description="PSI of the canary's score distribution against stable's above this fails."
    )
    min_labelled: int = Field(
        50, ge=1, description="Labelled canary predictions needed before precision/recall are judged."
    )
    max_precision_drop: float = Field(
        0.1, ge=0, le=1, description="Canary precision may trail stable's by at most this much."
    )
    max_recall_drop: float = Field(
        0.1, ge=0, le=1, description="Canary recall may trail stable's by at most this much."
    )

    @model_validator(mode="after")
    def _ladder_ends_at_full_traffic(self) -> RolloutSettings:
        steps = self.steps
        if not steps or steps[-1] != 100 or any(b <= a for a, b in pairwise(steps)):
            raise ValueError(f"rollout steps must increase strictly and end at 100, got {list(steps)}")
        if steps[0] <= 0:
            raise ValueError("the first rollout step must send some traffic (> 0%) to the canary")
        return self


class ApprovalSettings(BaseModel):
    """Whether a person must approve a challenger before its canary (DRIFTLOOP_APPROVAL__*)."""

    model_config = ConfigDict(frozen=True)

    require_approval: bool = Field(
        False,
        description="Hold every challenger before its canary until someone approves it through the "
        "review_challenger DAG (REST or UI); False: canaries start on their own.",
    )
    approval_timeout_minutes: float = Field(
        1440.0,
        gt=0,
        description="A challenger nobody approved within this many minutes is rejected "
        "('approval timed out') and never canaried.",
    )
    poll_seconds: float = Field(
        5.0, gt=0, description="How often the waiting deploy_model run looks for a decision."
    )


class MonitoringSettings(BaseModel):
    """How the prediction log's drift from a version's reference is judged (DRIFTLOOP_MONITORING__*)."""

    model_config = ConfigDict(frozen=True)

    numeric_method: Literal["psi", "ks"] = Field(
        "psi", description="Test whose verdict counts for a numeric feature (both are computed and stored)."
    )
    categorical_method: Literal["psi", "chi2"] = Field(
        "psi",
        description="Test whose verdict counts for a categorical feature (both are computed and stored).",
    )
    psi_threshold: float = Field(
        0.2, gt=0, description="PSI at or above this is drift (0.1 moderate, 0.25 major shift by convention)."
    )
    ks_p_value: float = Field(0.01, gt=0, lt=1, description="Two-sample KS p-value below this is drift.")
    chi2_p_value: float = Field(
        0.01, gt=0, lt=1, description="Chi-square p-value (categories and missing) below this is drift."
    )
    min_rows: int = Field(
        200, ge=2, description="Windows with fewer rows give an insufficient_data verdict, never a pass."
    )
    share_of_drifted_features: float = Field(
        0.3, gt=0, le=1, description="Dataset drift when at least this share of the model features drift."
    )
    reference_bins: int = Field(
        10, ge=2, le=100, description="Quantile bins of a numeric reference column (10: deciles)."
    )
    reference_sample_size: int = Field(
        5000,
        ge=100,
        le=100_000,
        description="Sorted sample kept per numeric column for KS; bounds its power.",
    )
    max_categories: int = Field(
        50, ge=1, description="Most frequent categories kept per column; the rest share one 'other' bin."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads computing columns in parallel. On 2 shared, busy cores 2 threads were slower "
        "than 1 (1M x 20: 0.69 s vs 0.62 s, load 5.5); raise on a dedicated worker.",
    )
    report_method: str | None = Field(
        None,
        description="Evidently drift method of the HTML report (e.g. psi, ks); None: Evidently's default.",
    )
    report_retention_days: float = Field(
        30.0, gt=0, description="HTML drift reports older than this many days are deleted."
    )
    schedule: str = Field(
        "*/5 * * * *", description="Cron of monitor_drift's backstop runs (new predictions also start one)."
    )
    window_minutes: float = Field(
        15.0, gt=0, description="Length of the prediction-log window each monitor_drift run judges."
    )
    watch_poll_seconds: float = Field(
        10.0,
        gt=0,
        description="How often the prediction-log watcher looks for new predictions (and so the most "
        "often new traffic starts a monitor_drift run).",
    )
    report_sample_rows: int = Field(
        5000,
        ge=100,
        le=100_000,
        description="Training rows kept with each version as the reference of its Evidently report.",
    )
    performance_window_hours: float = Field(
        24.0,
        gt=0,
        description="Predictions made this long before a run's moment whose labels have arrived are "
        "judged for precision, recall and PR-AUC (labels come late: longer than the drift window).",
    )
    min_labelled: int = Field(
        200,
        ge=2,
        description="Labelled predictions a performance window needs for a verdict; fewer give "
        "insufficient_data, never a pass.",
    )
    max_precision_drop: float = Field(
        0.1, ge=0, le=1, description="Precision may fall at most this far below the version's holdout's."
    )
    max_recall_drop: float = Field(
        0.1, ge=0, le=1, description="Recall may fall at most this far below the version's holdout recall."
    )
    max_pr_auc_drop: float = Field(
        0.1,
        ge=0,
        le=1,
        description="PR-AUC may fall at most this far below the holdout's (recorded; not a breach alone).",
    )


class FeedbackSettings(BaseModel):
    """How people's false-positive/false-negative feedback is accepted (DRIFTLOOP_FEEDBACK__*)."""

    model_config = ConfigDict(frozen=True)

    max_items: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Most feedback items one submission may carry; larger ones are refused (400).",
    )


class LoopSettings(BaseModel):
    """When a drift breach may start a retrain: guard rails against a retrain storm (DRIFTLOOP_LOOP__*)."""

    model_config = ConfigDict(frozen=True)

    cooldown_minutes: float = Field(
        60.0, ge=0, description="No automatic retrain within this many minutes of the previous one."
    )
    max_retrains_per_day: int = Field(
        4, ge=0, description="Automatic retrains allowed in any 24 hours (0: drift never retrains)."
    )
    breach_poll_seconds: float = Field(
        5.0, gt=0, description="How often the drift sensor's trigger reads the monitoring results."
    )
    sensor_timeout_minutes: float = Field(
        60.0, gt=0, description="A watch_drift run that saw no breach ends after this long; the next starts."
    )


class Settings(BaseSettings):
    """Everything that differs between runs, places and profiles."""

    # "null" spells None in the environment (an empty value is not reliably passed on by every
    # process that parses DAG files)
    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        env_parse_none_str="null",
    )

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
    spark_driver_host: str = Field(
        "127.0.0.1",
        description="IP address the Spark driver binds to and executors reach it on: loopback here; a "
        "driver pod gets its pod IP.",
    )
    spark_shuffle_partitions: int = Field(
        32,
        ge=1,
        description="Initial shuffle partitions; AQE coalesces small ones. The feature job's three "
        "sorts of 10M events ran about a sixth faster on local[2] with 32 than with 8.",
    )
    spark_delta_snapshot_partitions: int = Field(
        8,
        ge=1,
        description="Partitions Delta replays a table's log with (Delta's default of 50 is sized for "
        "clusters; small logs replay much faster with a handful).",
    )
    spark_remote: str | None = Field(
        None,
        pattern=r"^sc://[^/\s]+(/.*)?$",
        description="Spark Connect URL (sc://host:port) of a long-lived Spark server that tasks run "
        "their Spark work on (the embedded stack starts one); None: each process starts its own "
        "session on spark_master, paying a cold JVM (10-40 s here) every task.",
    )
    spark_job: SparkJobSettings = SparkJobSettings()
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (e.g. a local object store); None: AWS."
    )

    mlflow_tracking_uri: str = Field(
        "", description="MLflow tracking/registry URI. Empty: a SQLite store under <data_dir>/mlflow."
    )
    registered_model: str = Field("driftloop-fraud", description="The use case's registered model name.")
    optuna_storage: str = Field(
        "", description="Optuna RDB storage URL. Empty: SQLite under <data_dir>/optuna.db."
    )
    registry_lock_dsn: str | None = Field(
        None,
        description="PostgreSQL DSN whose advisory lock serialises registry decisions across hosts. "
        "None: a file lock under <data_dir> (one machine).",
    )
    training: TrainingSettings = TrainingSettings()
    gate: GateSettings = GateSettings()
    serving: ServingSettings = ServingSettings()
    rollout: RolloutSettings = RolloutSettings()
    approval: ApprovalSettings = ApprovalSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    loop: LoopSettings = LoopSettings()
    deploy_target: Literal["local", "kubernetes"] | None = Field(
        None, description="Where models are rolled out. None: follows the profile."
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

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI with the default applied."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts; None lets an MLflow server decide."""
        if self.mlflow_tracking_uri:
            return None
        return (self.data_dir / "mlflow" / "artifacts").as_uri()

    @property
    def optuna_storage_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.data_dir / 'optuna.db'}"

    @property
    def target(self) -> Profile:
        """The deploy target in use: set explicitly, or the profile's own."""
        return self.deploy_target or self.profile

    def table_uri(self, name: str) -> str:
        """URI of a Delta table in the lake, as Spark addresses it (s3a:// or a path)."""
        return f"{self.lake_uri}/tables/{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
