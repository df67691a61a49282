"""Output helpers that do not import typer (the `hcli status` fast path uses them too)."""

import json
import sys
from typing import Any

__all__ = ["print_json", "echo_err"]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def echo_err(message: str) -> None:
    """Human notes go to stderr so stdout stays clean for --json and pipes."""
    sys.stderr.write(message + "\n")
