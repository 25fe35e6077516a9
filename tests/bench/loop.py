"""Loop-latency benchmark: the closed loop on the embedded stack with the demo's windows, stage by stage.

Each round starts a fresh stack and lake and runs :class:`driftloop.closed_loop.ClosedLoop` (the
`make demo` loop). Stages are measured from the driver's marks; the table shows each stage's
median over the rounds. Targets (issue 5): drifted batch lands → drift Asset event within 60 s;
drift → new champion promoted within 10 minutes.

"Drifted batch lands" here is when the drifted batch's files are written to the landing area;
its predictions start when its features exist (the clients score featurized events), so the
table also shows drifted traffic → drift event, the monitoring path on its own.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from driftloop.closed_loop import ClosedLoop, LoopError, loop_settings, loop_stack
from driftloop.config import Settings
from driftloop.dataset import load_dataset_spec

RESULTS = Path(__file__).parent / "results"
STAGES = (
    ("drifted batch lands → drift Asset event", "drift_landed", "drift_event", 60.0),
    ("drifted batch lands → featurized", "drift_landed", "drift_featurized", None),
    ("drifted traffic starts → drift Asset event", "drift_traffic", "drift_event", None),
    ("drift Asset event → challenger registered", "drift_event", "challenger_registered", None),
    ("challenger registered → canary started", "challenger_registered", "canary_started", None),
    ("canary started → promoted", "canary_started", "promoted", None),
    ("drift Asset event → promoted", "drift_event", "promoted", 600.0),
)


def run(echo: Callable[[str], None], rounds: int = 3) -> list[dict]:
    spec = load_dataset_spec()
    marks, failures, chains = [], [], []
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="driftloop-bench-loop-") as scratch:
            settings = loop_settings(Settings(data_dir=Path(scratch) / "data"))
            with loop_stack(settings, echo) as stack:
                loop = ClosedLoop(settings, spec, stack, echo=echo, drill=False)
                try:
                    loop.run()
                except LoopError as exc:
                    # a round that stopped early still times the stages it reached; say why
                    failures.append(f"round {round_ + 1}: {exc}")
                    echo(f"round {round_ + 1}/{rounds} stopped: {exc}")
            marks.append(loop.report.marks)
            rounded = {k: round(v, 1) for k, v in loop.report.marks.items()}
            echo(f"round {round_ + 1}/{rounds}: {json.dumps(rounded)}")
            chain = loop.report.facts.get("drift_chain", [])
            chains.append(chain)
            for task in chain:
                echo(f"  drift path: {describe_task(task)}")
    rows = []
    for label, first, last, target in STAGES:
        seconds = [m[last] - m[first] for m in marks if first in m and last in m]
        rows.append(
            {
                "stage": label,
                "median_s": statistics.median(seconds) if seconds else None,
                "runs_s": seconds,
                "target_s": target,
                "rounds": rounds,
                "failures": failures,
                # per round: how its canary ended (a median over fewer rounds than run says why)
                "outcomes": [
                    "promoted" if "promoted" in m else "rolled_back" if "rolled_back" in m else "stopped"
                    for m in marks
                ],
            }
        )
    RESULTS.mkdir(exist_ok=True)
    # each round's tasks from the drifted batch landing to the drift event: where the time went
    (RESULTS / "loop.json").write_text(json.dumps({"stages": rows, "drift_paths": chains}, indent=2))
    return rows


def describe_task(task: dict) -> str:
    """One task of the drift path, its times in seconds after the drifted batch landed."""

    def at(name: str) -> str:
        value = task.get(name)
        return "—" if value is None else f"{value:.1f}"

    return (
        f"{task['dag_id']}.{task['task_id']} ({task['state']}): due {at('run_after')}, queued "
        f"{at('queued')}, started {at('start')}, ended {at('end')}"
    )


def summary(results: dict) -> str:
    rows, paths = results["stages"], results.get("drift_paths", [])
    lines = ["| stage | median | runs | target |", "|---|---|---|---|"]
    for row in rows:
        median = "—" if row["median_s"] is None else f"{row['median_s']:.0f} s"
        runs = ", ".join(f"{s:.0f}" for s in row["runs_s"])
        target = "" if row["target_s"] is None else f"≤ {row['target_s']:.0f} s"
        if row["target_s"] is not None and row["median_s"] is not None:
            target += " (met)" if row["median_s"] <= row["target_s"] else " (not met)"
        lines.append(f"| {row['stage']} | {median} | {runs} | {target} |")
    if rows:
        lines.append("")
        lines.append(f"canaries per round: {', '.join(rows[0].get('outcomes', []))}")
        lines.extend(f"- {failure}" for failure in rows[0].get("failures", []))
    for n, path in enumerate(paths, 1):
        lines.append(f"\nround {n}, the drift path (seconds after the drifted batch landed):")
        lines.extend(f"- {describe_task(task)}" for task in path)
    return "\n".join(lines)
