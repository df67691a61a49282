"""`hcli collect`: the study's tables and figures from run folders."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
