"""`hcli doctor`: the probe job's checks, run in this process."""

from pathlib import Path
from typing import Annotated

import typer

from hcli.cli._common import ConfigArg, Json, Overrides, RunsDir, print_json

__all__ = ["register"]


def doctor(
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Prepared data folder to check (default: the data.root of the spec below).",
            show_default=False,
        ),
    ] = None,
    config: ConfigArg = None,
    overrides: Overrides = None,
    json_out: Json = False,
    runs_dir: RunsDir = None,
) -> None:
    """Check this machine: torch/timm/CUDA, GPUs, CPUs, the data folder, the runs root, SLURM.

    The data folder checked is the one a run would use: --data, else the data.root of the spec
    --config/-o describe (the defaults without them), as `hcli submit probe` checks on a node.
    """
    from hcli.runs import resolve_runs_dir
    from hcli.scheduler import cluster_available
    from jobs.probe import environment_report

    if data_root is None:
        from hcli.spec import load_spec

        data_root = load_spec(config, overrides=overrides or []).data.root
    report = environment_report(data_root.resolve(), resolve_runs_dir(runs_dir))
    report["sbatch_on_path"] = cluster_available()
    if json_out:
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, title="hcli doctor", title_justify="left")
    for key, value in report.items():
        table.add_row(key, str(value))
    Console().print(table)
    if not report["data"]["prepared"]:
        typer.echo(
            f"note: no prepared data at {data_root}; run `hcli data synth` + `hcli data prepare`, "
            "or point --data (or the spec's data.root) at a prepared folder"
        )


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
