"""The ``local`` feature-job runner: the job runs in this process on the shared Spark session."""

from __future__ import annotations

from driftloop.config import Settings
from driftloop.feature_jobs.base import FeatureJobRunner
from driftloop.features import FeatureRunReport


class LocalFeatureRunner(FeatureJobRunner):
    """``build_features`` on :func:`driftloop.lake.spark.get_spark` (``DRIFTLOOP_SPARK_MASTER``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, run_key: str) -> FeatureRunReport:
        from driftloop.dataset import get_dataset_spec
        from driftloop.features import build_features
        from driftloop.lake.spark import get_spark

        return build_features(get_spark(self.settings), self.settings, get_dataset_spec())
