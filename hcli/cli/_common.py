"""Option aliases shared by the command modules, shell completion, and output helpers."""

from pathlib import Path
from typing import Annotated

import typer

from hcli.cli._output import echo_err, print_json

__all__ = [
    "RunsDir", "RunArg", "Json", "Overrides", "ConfigArg", "complete_run_id", "print_json",
    "echo_err",
]

RunsDir = Annotated[
    Path | None,
    typer.Option(
        "--runs-dir",
        help="Runs root (default: $HCLI_RUNS_DIR, else ./runs).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "-o",
        "--override",
        help="Set a spec key: -o train.lr=3e-4 (repeatable; typed by the schema).",
        show_default=False,
    ),
]
ConfigArg = Annotated[
    str | None,
    typer.Option(
        "--config", "-c", help="YAML spec: a path or a name in configs/ (e.g. quickstart)."
    ),
]


def complete_run_id(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of a RUN argument: the run ids under the runs root that start with what
    was typed. The root is the command's --runs-dir when already on the line, else as usual."""
    from hcli.runs import iter_runs
    from hcli.runs_dir import resolve_runs_dir

    given = ctx.params.get("runs_dir")
    try:
        root = resolve_runs_dir(Path(given) if given else None)
        return [r.run_id for r in iter_runs(root) if r.run_id.startswith(incomplete)]
    except OSError:  # an unreadable root completes to nothing rather than a traceback
        return []


RunArg = Annotated[
    str,
    typer.Argument(help="Run id (or unique prefix, or path).", autocompletion=complete_run_id),
]
