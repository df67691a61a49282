"""The Typer app: every command's definition, help and errors (see hcli.cli for the edge)."""

from typing import Annotated

import typer

from hcli import __version__
from hcli.cli import bench as _bench
from hcli.cli import collect as _collect
from hcli.cli import data as _data
from hcli.cli import doctor as _doctor
from hcli.cli import runs as _runs
from hcli.cli import spec as _spec
from hcli.cli import study as _study

__all__ = ["app"]

app = typer.Typer(
    name="hcli",
    help="Damage-segmentation studies on ARTeFACT: data, specs, jobs on SLURM or locally, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion; RUN arguments complete run ids from the runs
    # root (hcli.cli._common.complete_run_id). Typer imports its completion code either way.
    add_completion=True,
    # Plain click help and usage errors: typer's rich help imports rich.markdown and markdown_it,
    # ~150 ms of `hcli --help` on a 2-core machine (benchmarks/bench_cli.py), and no help text
    # here uses markup. The sub-apps (spec, data) say the same.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Plain `hcli --version` never gets here (hcli.cli.main answers it without typer); the
    # option is declared for --help and for forms like `hcli --version --help`.
    pass


app.add_typer(_spec.app, name="spec", help="Show, validate and describe experiment specs.")
app.add_typer(_data.app, name="data", help="Synthesize, prepare, inspect and split ARTeFACT data.")
_runs.register(app)
_study.register(app)
_doctor.register(app)
_collect.register(app)
_bench.register(app)
