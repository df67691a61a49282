"""`hcli collect`: the study's tables and figures from run folders."""

from pathlib import Path
from typing import Annotated, Any

import typer

from hcli.cli._common import Json, RunsDir, print_json

__all__ = ["register", "run_collect"]

_ALL_FORMATS = "md,csv,latex,json"


def run_collect(
    refs: list[str],
    *,
    out: Path | None = None,
    formats: str = _ALL_FORMATS,
    group_by: str | None = None,
    runs_dir: Path | None = None,
    figures: bool = True,
) -> Any:
    """Resolve the runs and write the report; returns `hcli.report.CollectResult`."""
    from datetime import datetime

    from hcli.report import collect, parse_formats, resolve_run_args
    from hcli.runs import resolve_runs_dir

    wanted = parse_formats(formats)
    runs = resolve_run_args(refs, resolve_runs_dir(runs_dir))
    if out is None:
        out = Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    return collect(runs, out, wanted, group_by, figures=figures)


def register(app: typer.Typer) -> None:
    @app.command("collect")
    def collect_cmd(
        runs: Annotated[
            list[str] | None,
            typer.Argument(
                metavar="[RUN_OR_GLOB]...",
                help="Run folders, globs ('runs/multiclass-*') or run ids (default: every run "
                "under the runs root).",
                show_default=False,
            ),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option("--out", help="Report folder (default: reports/<timestamp>/).",
                         show_default=False),
        ] = None,
        formats: Annotated[
            str, typer.Option("--format", help="Table files to write: any of md,csv,latex,json.")
        ] = _ALL_FORMATS,
        group_by: Annotated[
            str | None,
            typer.Option("--group-by", help="Spec field the comparison compares "
                         "(default: model.backbone).", show_default=False),
        ] = None,
        no_figures: Annotated[
            bool, typer.Option("--no-figures", help="Tables only (fast over thousands of runs).")
        ] = False,
        runs_dir: RunsDir = None,
        json_out: Json = False,
    ) -> None:
        """Tables (per run, across backbones, per class, ablations, domains) and figures."""
        result = run_collect(runs or [], out=out, formats=formats, group_by=group_by,
                             runs_dir=runs_dir, figures=not no_figures)
        if json_out:
            print_json(result.to_json())
            return
        from rich.console import Console

        console = Console(soft_wrap=True)
        n_fig = sum(p.suffix == ".png" for p in result.files)
        partial = sum(r.in_progress for r in result.runs)
        console.print(
            f"[bold]Report:[/bold] {result.report}  ({len(result.runs)} "
            + ("run" if len(result.runs) == 1 else "runs")
            + (f", {partial} in progress" if partial else "")
            + f", {len(result.tables)} tables, {n_fig} figures)"
        )
        if result.warnings:
            console.print(f"[yellow]{len(result.warnings)} warning(s)[/yellow], listed at the "
                          "end of report.md")
