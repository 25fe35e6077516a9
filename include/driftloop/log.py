"""Structured logging for driftloop: JSON-ish key/value events through structlog.

Values whose keys look like secrets are redacted before anything is rendered.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"(password|secret|token|credential|api_key|access_key)", re.IGNORECASE)
_configured = False


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if _SECRET_KEY.search(key):
            event[key] = "***"
    return event


def configure_logging(level: int = logging.INFO) -> None:
    """Route structlog through the standard library so Airflow task logs capture it."""
    global _configured
    if _configured:
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; configuration happens lazily on first use, not at import.

    Inside an Airflow task, Airflow's task runner has configured structlog already: its
    renderer is kept (replacing it lost the tracebacks of failed tasks from their logs), with
    the secret redaction put in front.
    """
    if structlog.is_configured() and not _configured:
        processors = [_redact_secrets, *structlog.get_config()["processors"]]
        return structlog.wrap_logger(None, processors=processors, logger_factory_args=(name,))
    configure_logging()
    return structlog.get_logger(name)
