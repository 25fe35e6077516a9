"""The feature-job runner interface: bring the features table up to date with bronze, somewhere.

Every implementation runs the same library function (:func:`driftloop.features.build_features`),
so a run is idempotent wherever it happens: the bronze version is committed with the MERGE.
"""

from __future__ import annotations

import abc

from driftloop.features import FeatureRunReport


class FeatureJobError(RuntimeError):
    """The feature job could not be started or did not finish; the message says what to check."""


class FeatureJobRunner(abc.ABC):
    """Runs the Spark feature job and reports what it did."""

    @abc.abstractmethod
    def run(self, run_key: str) -> FeatureRunReport:
        """Run the feature job once for ``run_key`` (e.g. the DAG run) and wait for its report.

        Retries with the same ``run_key`` never run two jobs at once: a runner that hands the
        job to another process picks up the one an earlier try started.
        """
