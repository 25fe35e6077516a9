"""checkov over rendered Kubernetes objects, offline, for the tests of what driftloop renders."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = Path(os.environ.get("DRIFTLOOP_TOOLS_BIN", REPO / ".venv-tools" / "bin"))


@dataclass(frozen=True)
class CheckovResult:
    """What checkov found: failed checks as readable lines, the ids it skipped, its counts."""

    failures: list[str]
    skipped: set[str]
    passed: int
    parsing_errors: int


def scan(objects: Iterable[dict[str, Any]], folder: Path) -> CheckovResult:
    """Write ``objects`` as one YAML file into ``folder`` and run checkov's Kubernetes checks on it."""
    checkov = TOOLS_BIN / "checkov"
    if not checkov.exists():
        pytest.fail(f"{checkov} is missing: run `make setup` (it builds .venv-tools)")
    (folder / "rendered.yaml").write_text(yaml.safe_dump_all(list(objects), sort_keys=False))
    result = subprocess.run(
        # --skip-download: offline, no guideline download from the vendor's platform
        [
            str(checkov),
            "-d",
            str(folder),
            "--framework",
            "kubernetes",
            "--compact",
            "-o",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {result.returncode}):\n{result.stderr[-2000:]}")
    results = report.get("results", {})
    return CheckovResult(
        failures=[
            f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results.get("failed_checks", [])
        ],
        skipped={c["check_id"] for c in results.get("skipped_checks", [])},
        passed=report["summary"]["passed"],
        parsing_errors=report["summary"]["parsing_errors"],
    )
