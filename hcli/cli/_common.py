"""Option aliases shared by the command modules, and output helpers."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

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


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def echo_err(message: str) -> None:
    """Human notes go to stderr so stdout stays clean for --json and pipes."""
    sys.stderr.write(message + "\n")
