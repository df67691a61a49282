"""`hcli submit | resume | status | logs | cancel`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
