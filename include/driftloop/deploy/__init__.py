"""Deploy targets: where model variants run and how traffic splits between them."""

from __future__ import annotations

from driftloop.config import Settings
from driftloop.deploy.base import DeployTarget


def get_target(settings: Settings) -> DeployTarget:
    """The deploy target chosen by configuration (``DRIFTLOOP_DEPLOY_TARGET`` or the profile)."""
    if settings.target == "kubernetes":
        from driftloop.deploy.kubernetes import KubernetesTarget

        return KubernetesTarget(settings)
    from driftloop.deploy.local import LocalTarget

    return LocalTarget(settings)
