"""`hcli data ...`: synth, prepare, stats, splits (owned by the data work)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
