"""Option aliases shared by the command modules, and output helpers."""

from pathlib import Path
from typing import Annotated

import typer

from hcli.cli._output import echo_err, print_json

__all__ = ["RunsDir", "Json", "Overrides", "ConfigArg", "print_json", "echo_err"]

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
