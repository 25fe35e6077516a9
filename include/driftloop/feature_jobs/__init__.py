"""Feature-job runners: where the Spark feature job runs, chosen once from settings.

``local`` runs it in the calling process on the local Spark session; ``kubernetes`` runs it as
Spark on Kubernetes (a driver pod and its executor pods). DAGs only call :func:`get_feature_runner`.
"""

from __future__ import annotations

from driftloop.config import Settings
from driftloop.feature_jobs.base import FeatureJobError, FeatureJobRunner

__all__ = ["FeatureJobError", "FeatureJobRunner", "get_feature_runner"]


def get_feature_runner(settings: Settings) -> FeatureJobRunner:
    """The runner chosen by ``DRIFTLOOP_SPARK_JOB__RUNNER``, or by the profile when unset."""
    if (settings.spark_job.runner or settings.profile) == "kubernetes":
        from driftloop.feature_jobs.kubernetes import KubernetesFeatureRunner

        return KubernetesFeatureRunner(settings)
    from driftloop.feature_jobs.local import LocalFeatureRunner

    return LocalFeatureRunner(settings)
