"""`hcli doctor`: the probe's checks, in this process."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
