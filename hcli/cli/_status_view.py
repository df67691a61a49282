"""How `hcli status` shows its rows: a fixed-width table, or JSON. Imports no typer, so the
fast path (`hcli.cli._fast`) and the Typer command print exactly the same thing."""

import os
import sys
from pathlib import Path
from typing import Any

from hcli.cli._output import print_json

__all__ = ["COLUMNS", "STATE_STYLE", "cells", "fmt_duration", "format_table", "show"]

COLUMNS = (
    "run id",
    "kind",
    "backbone",
    "state",
    "job",
    "restarts",
    "progress",
    "val mIoU",
    "ETA",
    "heartbeat",
)
STATE_STYLE = {
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "PENDING": "yellow",
    "REQUEUED": "yellow",
    "FAILED": "red",
    "CANCELLED": "magenta",
    "STALE": "red",
}
# SGR codes, as click.style writes them: eight colours and bold are all this table needs.
_SGR = {"red": 31, "green": 32, "yellow": 33, "magenta": 35, "cyan": 36, "bold": 1}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def cells(r: dict[str, Any]) -> list[str]:
    prog = "-"
    if r["step"] is not None and r["total_steps"]:
        prog = f"{r['step']}/{r['total_steps']} ({100 * r['progress']:.0f}%)"
    metric = f"{r['latest_metric']:.3f}" if isinstance(r["latest_metric"], int | float) else "-"
    age = r["heartbeat_age_s"]
    beat = fmt_duration(age) + (" ago" if age is not None else "")
    return [
        r["run_id"],
        r["kind"] or "-",
        r["backbone"] or "-",
        r["state"],
        r["job_id"] or "-",
        str(r["restarts"]),
        prog,
        metric,
        fmt_duration(r["eta_s"]),
        beat,
    ]


def _style(text: str, style: str, color: bool) -> str:
    return f"\x1b[{_SGR[style]}m{text}\x1b[0m" if color else text


def format_table(rows: list[dict[str, Any]], root: Path, color: bool) -> str:
    # Fixed-width columns by hand, not rich.Table: rich measures and wraps every cell, ~0.5 s for
    # 500 runs on a 2-core machine (benchmarks/bench_cli.py), against a few ms here; one run per
    # line never needs wrapping, and piped output (grep, logs) gets whole rows.
    if not rows:
        return f"no runs under {root} (submit one: hcli submit multiclass --config quickstart)"
    table = [list(COLUMNS), *(cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [f"runs in {root}"]
    for n, row in enumerate(table):
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        padded.append(row[-1])
        if n == 0:
            padded = [_style(cell, "bold", color) for cell in padded]
        elif row[3] in STATE_STYLE:
            padded[3] = _style(padded[3], STATE_STYLE[row[3]], color)
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _color_wanted() -> bool:
    """Colour on a terminal only (https://no-color.org: NO_COLOR set and non-empty turns it off)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def show(root: Path, *, kind: str | None, state: str | None, json_out: bool) -> None:
    """Print the status of every run under `root` once (what `hcli status` without --watch does)."""
    from hcli.status import status_rows

    rows = status_rows(root, kind=kind, state=state)
    if json_out:
        print_json(rows)
    else:
        sys.stdout.write(format_table(rows, root, _color_wanted()) + "\n")
