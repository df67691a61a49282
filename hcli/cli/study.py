"""`hcli plan STUDY` and `hcli submit pipeline STUDY` (hcli.study): a study's cost, and the study
queued as one pipeline."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from hcli.cli._common import Json, RunsDir, echo_err, print_json

__all__ = ["register", "submit_pipeline_cmd"]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def plan(
    study: Annotated[str, typer.Argument(help="Study file (a path or a name in configs/).")],
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="Devices the study may use at once.")]
    = 1,
    time_limit: Annotated[
        str | None, typer.Option("--time-limit", help="Job time limit, e.g. 24h, 90m (default: "
                                 "each spec's slurm.time_min).")
    ] = None,
    hardware: Annotated[
        str | None, typer.Option("--hardware", help="Calibrated hardware to plan for: a GPU "
                                 "name (A100), a key substring, or cpu.")
    ] = None,
    throughput: Annotated[
        float | None, typer.Option("--throughput", min=1e-9,
                                   help="Training samples/s where no calibration exists.")
    ] = None,
    figure: Annotated[
        Path | None, typer.Option("--figure", help="Gantt chart PNG (default: "
                                  "reports/plan-<study>.png; '-' for none).")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Plan `hcli submit pipeline --local`: one chain on "
                           "this machine, one process start.")
    ] = False,
    json_out: Json = False,
    runs_dir: RunsDir = None,
) -> None:
    """GPU-hours and wall clock per stage of a study, from `hcli bench` calibrations."""
    from hcli.runs import resolve_runs_dir
    from hcli.status import parse_since
    from hcli.study import expand_study, load_study
    from hcli.study.plan import plan_study

    root = resolve_runs_dir(runs_dir)
    parsed, _ = load_study(study)
    stages = expand_study(parsed)
    limit = parse_since(time_limit) if time_limit else None
    if limit is None:
        limits = {p.spec.slurm.time_min for runs in stages.values() for p in runs}
        limit = 60.0 * min(limits) if limits else None
    result = plan_study(parsed, stages, root, gpus=gpus, hardware=hardware, time_limit_s=limit,
                        throughput=throughput, chain=local)
    if json_out:
        print_json(result.to_json())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.study} on {gpus} device(s) · {result.hardware}",
                  title_justify="left")
    for col in ("stage", "kind", "runs", "steps", "device-h", "array", "requeues/run",
                "start", "end"):
        table.add_column(col, justify="left" if col in ("stage", "kind") else "right")
    for s in result.stages:
        table.add_row(s.stage, s.kind, str(len(s.runs)), f"{s.steps:,}", f"{s.device_hours:.2f}",
                      str(s.array_width), str(s.requeues), _hours(s.start_s), _hours(s.end_s))
    console = Console()
    console.print(table)
    console.print(
        f"wall clock {_hours(result.wall_s)} on {gpus} device(s); {result.device_hours:.2f} "
        f"device-hours; critical path {' → '.join(result.critical_path)} "
        f"({_hours(result.critical_s)} with unlimited devices); time limit "
        f"{_hours(limit) if limit else 'none'}; queue waits not included"
    )
    for note in result.assumptions:
        console.print(f"[yellow]assumed:[/] {note}")
    if str(figure) != "-":
        from hcli.study.gantt import draw_gantt

        path = draw_gantt(result, figure or Path("reports") / f"plan-{result.study}.png")
        console.print(f"figure: {path}")


def submit_pipeline_cmd(study: str, *, mode: str, dry_run: bool, json_out: bool,
                        root: Path, check: Callable[..., None]) -> None:
    """`hcli submit pipeline STUDY`; `check(planned, root, slurm=, dry_run=, force=)` is the
    submit command's preflight, applied to every stage's runs before anything is queued."""
    from hcli.study import expand_study, load_study
    from hcli.study._pipeline import submit_pipeline

    parsed, file = load_study(study)
    stages = expand_study(parsed)
    outcomes = submit_pipeline(parsed, file, stages, root, mode=mode, dry_run=dry_run,
                               check=check)
    if json_out:
        print_json({"study": parsed.study, "dry_run": dry_run, "stages": [
            {"stage": o.stage, "kind": o.kind, "needs": o.needs, "runs": o.runs,
             "submitted": o.submitted, "resumed": o.resumed, "existing": o.existing,
             "dependency": o.dependency} for o in outcomes]})
        return
    verb = "would submit" if dry_run else "submitted"
    for o in outcomes:
        needs = f" after {', '.join(o.needs)}" if o.needs else ""
        typer.echo(f"{o.stage} ({o.kind}, {len(o.runs)} runs){needs}: {len(o.submitted)} {verb}"
                   + (f", {len(o.resumed)} resumed" if o.resumed else "")
                   + (f", {len(o.existing)} already there" if o.existing else "")
                   + (f"; dependency {o.dependency}" if o.dependency else ""))
        if dry_run:
            for rid in o.runs:
                typer.echo(f"  {rid}{'' if rid in o.submitted else '  (exists)'}")
    if not dry_run:
        echo_err(f"hcli status --pipeline {parsed.study} shows where each stage stands")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
