"""The `driftloop` command line: simulate data, run pipeline stages by hand, and the demo.

Each command is a thin shell over the library, so what runs here is what the DAGs run.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="driftloop: the closed MLOps loop over Delta Lake, MLflow and BentoML.", no_args_is_help=True
)


def _settings():
    from driftloop.config import get_settings

    return get_settings()


def _spec():
    from driftloop.dataset import get_dataset_spec

    return get_dataset_spec()


@app.command()
def simulate(
    scenario: Annotated[
        str, typer.Option(help="baseline, covariate_shift, new_category, concept_drift, label_delay")
    ] = "baseline",
    batches: Annotated[int, typer.Option(min=1, help="How many batches to land.")] = 6,
    first_batch: Annotated[int, typer.Option(min=0, help="Index of the first batch.")] = 0,
    events_per_batch: Annotated[int, typer.Option(min=1)] = 2_000,
    seed: Annotated[int, typer.Option()] = 42,
    start: Annotated[
        datetime | None, typer.Option(help="UTC start of batch 0 (default: simulator's).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl")] = "parquet",
    bad_row_fraction: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.0,
) -> None:
    """Land simulated event and label batches in the landing area."""
    from driftloop.simulator import SimulationConfig, write_landing_batches

    overrides = {"seed": seed, "events_per_batch": events_per_batch, "bad_row_fraction": bad_row_fraction}
    if start is not None:
        overrides["start_time"] = (
            start if start.tzinfo else start.replace(tzinfo=datetime.now().astimezone().tzinfo)
        )
    try:
        config = SimulationConfig.for_scenario(scenario, **overrides)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    files = write_landing_batches(
        config, Path(_settings().landing), fmt=fmt, batches=range(first_batch, first_batch + batches)
    )
    for landed in files:
        typer.echo(f"landed {landed.kind:<6} {landed.rows:>7,} rows  {landed.path}")


@app.command()
def ingest() -> None:
    """Ingest everything in the landing area (what the ingest_events DAG runs)."""
    from driftloop.ingest import ingest_landing

    summary = ingest_landing(_settings(), _spec())
    typer.echo(json.dumps(summary.as_dict(), indent=2, default=str))


@app.command()
def features(
    report_file: Annotated[
        Path | None,
        typer.Option(
            help='Also write the run report (JSON) here, or on failure {"error": ...}: a driver pod '
            "passes /dev/termination-log, where the task that started it reads the outcome."
        ),
    ] = None,
) -> None:
    """Bring the features table up to date with bronze (what the build_features DAG runs).

    This is the entry point of the feature job's driver pod in the kubernetes profile.
    """
    from driftloop.features import build_features
    from driftloop.lake.spark import get_spark, stop_spark

    settings = _settings()
    try:
        report = build_features(get_spark(settings), settings, _spec())
    except Exception as exc:
        if report_file is not None:
            # the kubelet keeps at most 4 KiB of a termination message
            report_file.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:3500]}))
        raise
    finally:
        # a driver on Kubernetes releases its executor pods now rather than at interpreter exit
        stop_spark()
    if report_file is not None:
        report_file.write_text(json.dumps(report.as_dict()))
    typer.echo(json.dumps(report.as_dict(), indent=2))


@app.command("spark-server")
def spark_server(
    port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port clients connect to.")] = 15002,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless you mean it).")] = "127.0.0.1",
) -> None:
    """Run a Spark Connect server until Ctrl-C: tasks with DRIFTLOOP_SPARK_REMOTE=sc://HOST:PORT
    run their Spark work on its warm JVM instead of starting one each (the embedded stack starts
    its own)."""
    from driftloop.lake.spark_connect import serve

    serve(_settings(), host, port)


registry_app = typer.Typer(help="The model registry: aliases and their history.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("history")
def registry_history(
    limit: Annotated[int, typer.Option(min=1, help="How many moves, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
) -> None:
    """Every alias move: which version, from what, when, by which run, why."""
    from driftloop.registry import Registry

    moves = Registry(_settings()).history(limit)
    if not moves:
        typer.echo("no alias has moved yet")
    for move in moves:
        if as_json:
            typer.echo(json.dumps(move.as_dict()))
        else:
            typer.echo(
                f"{move.moved_at:%Y-%m-%d %H:%M:%S} {move.alias:<10} v{move.version or '-':<4} "
                f"(was v{move.previous_version or '-'})  {move.actor}  {move.run_key}  {move.reason}"
            )


@registry_app.command("aliases")
def registry_aliases() -> None:
    """Where champion, challenger and previous point now."""
    from driftloop.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry

    registry = Registry(_settings())
    for alias in (CHAMPION, CHALLENGER, PREVIOUS):
        version = registry.alias_version(alias)
        typer.echo(f"{alias:<10} {'v' + str(version.version) if version else '-'}")


@app.command()
def demo() -> None:
    """The main job on the embedded defaults, end to end, printing what happened."""
    from driftloop.closed_loop import LoopError
    from driftloop.demo import run_demo
    from driftloop.stack import StackError

    try:
        run_demo(_settings(), _spec(), typer.echo)
    except (LoopError, StackError) as exc:
        typer.echo(f"demo stopped: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def up(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the UI and REST API.")] = 8080,
) -> None:
    """Run Airflow (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1 until Ctrl-C."""
    import signal
    import time

    from driftloop.stack import AirflowStack, StackError

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the stack like Ctrl-C
    settings = _settings()
    stack = AirflowStack(settings, port=port, echo=typer.echo)
    try:
        stack.start()
        users = "   ".join(f"{user} / {password}" for user, password in stack.credentials().items())
        typer.echo(
            f"\ndriftloop stack is up — Ctrl-C stops it\n"
            f"  Airflow UI + REST API  {stack.ui_url}\n"
            f"  users (demo only)      {users}   (kept in {stack.passwords_file})\n"
            f"  component logs         {stack.logs}\n"
            f"  MLflow store           {settings.tracking_uri}\n"
            f"  DAGs start paused: unpause them in the UI, or PATCH /api/v2/dags/<dag_id>.\n"
        )
        while not (exited := stack.exited()):
            time.sleep(2)
        for name, log in exited.items():
            typer.echo(f"airflow {name} stopped unexpectedly; see {log}", err=True)
        raise typer.Exit(1)
    except StackError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("stopping the stack …")
    finally:
        stack.stop()


if __name__ == "__main__":
    app()
