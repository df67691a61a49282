"""How `hcli status` shows its rows: a fixed-width table, or JSON. Imports no typer, so the
fast path (`hcli.cli._fast`) and the Typer command print exactly the same thing."""

import json
import os
import sys
from pathlib import Path
from typing import Any

from hcli.cli._output import print_json

__all__ = [
    "COLUMNS", "STATE_STYLE", "cells", "fmt_duration", "format_table", "hidden_line", "show",
    "show_run", "window",
]

COLUMNS = (
    "run id",
    "kind",
    "backbone",
    "state",
    "job",
    "restarts",
    "progress",
    "val",
    "ETA",
    "heartbeat",
    "reason",
)
STATE_STYLE = {
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "PENDING": "yellow",
    "REQUEUED": "yellow",
    "FAILED": "red",
    "CANCELLED": "magenta",
    "STALE": "red",
    "BLOCKED": "magenta",
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
        if r.get("stage") and r["state"] != "COMPLETED":
            prog += f" {r['stage']}"  # a curriculum run's stage: "coarse 2/3"
    metric = f"{r['latest_metric']:.3f}" if isinstance(r["latest_metric"], int | float) else "-"
    if r["kind"] == "mae" and metric != "-":
        metric = f"loss {metric}"
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
        r.get("reason") or "",
    ]


def _style(text: str, style: str, color: bool) -> str:
    return f"\x1b[{_SGR[style]}m{text}\x1b[0m" if color else text


def hidden_line(hidden: int, since: str) -> str:
    """The line under the table that says what the time window left out, and how to see it."""
    runs = "1 run" if hidden == 1 else f"{hidden} runs"
    return (f"{runs} that ended more than {since} ago not shown: `hcli status --all` shows every "
            "run, `--since 7d` a wider window")


def format_table(rows: list[dict[str, Any]], root: Path, color: bool, *, hidden: int = 0,
                 since: str = "", filtered: bool = False) -> str:
    # Fixed-width columns by hand, not rich.Table: rich measures and wraps every cell, ~0.5 s for
    # 500 runs on a 2-core machine (benchmarks/bench_cli.py), against a few ms here; one run per
    # line never needs wrapping, and piped output (grep, logs) gets whole rows.
    footer = f"\n{hidden_line(hidden, since)}" if hidden else ""
    if not rows:
        if hidden:
            return f"no run under {root} is active or ended in the last {since}{footer}"
        if filtered:
            return f"no run under {root} matches the filters given"
        return f"no runs under {root} (submit one: hcli submit multiclass --config quickstart)"
    table = [list(COLUMNS), *(cells(r) for r in rows)]
    if not any(row[-1] for row in table[1:]):
        table = [row[:-1] for row in table]  # no run needs explaining: no empty column
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    if len(table[0]) == len(COLUMNS) and (room := _reason_room(widths)) is not None:
        for row in table[1:]:
            row[-1] = _cut(row[-1], room)
    # One format string for every line (a third of the time of padding cell by cell over
    # thousands of rows); a styled cell is padded before its colour codes are added.
    line = "  ".join(f"{{:<{width}}}" for width in widths[:-1]) + "  {}"
    at = COLUMNS.index("state")
    head = [cell.ljust(width) for cell, width in zip(table[0][:-1], widths, strict=False)]
    head.append(table[0][-1])
    lines = [f"runs in {root}", "  ".join(_style(cell, "bold", color) for cell in head)]
    for row in table[1:]:
        if color and row[at] in STATE_STYLE:
            row[at] = _style(row[at].ljust(widths[at]), STATE_STYLE[row[at]], color)
        lines.append(line.format(*row).rstrip())
    return "\n".join(lines) + footer


def _reason_room(widths: list[int]) -> int | None:
    """Characters left for the reason on a terminal line; None when the output goes to no
    terminal (a pipe or a file keeps whole reasons, one run per line) and COLUMNS is unset."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        import shutil

        used = sum(widths[:-1]) + 2 * (len(widths) - 1)
        # Wider tables wrap anyway: a reason stays readable rather than vanishing.
        return max(24, shutil.get_terminal_size().columns - used)
    return None


def _cut(text: str, room: int) -> str:
    return text if len(text) <= room else text[: room - 1] + "…"


def _color_wanted() -> bool:
    """Colour on a terminal only (https://no-color.org: NO_COLOR set and non-empty turns it off)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def window(since: str | None, all_runs: bool, json_out: bool) -> tuple[str, float | None]:
    """The time window for ended runs as (text, seconds; None: no window). The table shows the
    runs ended in the last 24 h unless told otherwise; --json keeps every run unless --since."""
    from hcli.status import DEFAULT_SINCE, parse_since

    if all_runs and since is not None:
        from hcli.errors import UserError

        raise UserError("--all shows every run and --since a window of them; give one")
    if all_runs or (json_out and since is None):
        return "", None
    text = since if since is not None else DEFAULT_SINCE
    return text, parse_since(text)


def show(root: Path, *, kind: str | None, state: str | None, json_out: bool,
         pattern: str | None = None, since: str | None = None, all_runs: bool = False) -> None:
    """Print the status of the runs under `root` once (what `hcli status` without --watch does):
    those the filters keep, and of the ended ones only those in the time window."""
    from hcli.status import select_rows

    text, since_s = window(since, all_runs, json_out)
    rows, hidden = select_rows(root, kind=kind, state=state, pattern=pattern, since_s=since_s)
    if json_out:
        # One run per line: json's C encoder runs only without `indent` (a third of the time
        # of --json at 5,000 runs, benchmarks/bench_cli.py), and a line per run greps well.
        encode = json.JSONEncoder(default=str).encode  # one encoder, not one per run
        body = ",\n".join(map(encode, rows))
        sys.stdout.write(f"[\n{body}\n]\n" if rows else "[]\n")
    else:
        filtered = bool(kind or state or pattern)
        out = format_table(rows, root, _color_wanted(), hidden=hidden, since=text,
                           filtered=filtered)
        sys.stdout.write(out + "\n")


def _when(iso: str | None) -> str:
    """`2026-12-02T05:40:20+00:00` as `12-02 05:40:20`: the year and zone (UTC, as written)
    cost a column's width in a table that must fit a terminal."""
    return f"{iso[5:10]} {iso[11:19]}" if iso and len(iso) >= 19 else (iso or "-")


def _hours(compute: dict[str, Any]) -> str:
    """This attempt's node-hours; executions killed before recording their end make it a floor."""
    hours = compute.get("node_hours")
    text = f"{hours:.3f}" if hours is not None else "-"
    unended = compute.get("unended") or 0
    return text + (f" (+{unended} execution(s) without a recorded end)" if unended else "")


def show_run(root: Path, ref: str, *, json_out: bool) -> None:
    """Print one run in detail (`hcli status RUN`): rich for people, JSON for scripts."""
    from hcli.status import run_detail

    d = run_detail(root, ref)
    if json_out:
        print_json(d)
        return
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

    def kv(rows: list[tuple[str, Any]]) -> Table:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in rows:
            grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
        return grid

    state = Text(d["state"], style=STATE_STYLE.get(d["state"], ""))
    if d["recorded_state"] != d["state"]:
        state.append(f"  (state.json says {d['recorded_state']}", style="dim")
        if d["scheduler_state"]:
            state.append(f"; scheduler: {d['scheduler_state']}", style="dim")
        state.append(")", style="dim")
    head = [
        ("state", state),
        ("kind", f"{d['kind'] or '-'}  backbone {d['backbone'] or '-'}  name {d['name'] or '-'}"),
    ]
    if d["reason"] or d["message"]:
        head.append(("why" if d["reason"] else "message", d["reason"] or d["message"]))
    row = cells(d)
    head += [
        ("progress", f"{row[6]}  ETA {row[8]}  heartbeat {row[9]}"),
        (
            "attempt",
            f"{d['attempt']}  restarts {d['restarts']}  requeues {len(d['requeues'])}  "
            f"node-hours {_hours(d['compute'])}",
        ),
    ]
    parts: list[Any] = [Text(d["run_id"], style="bold"), kv(head)]

    # Times in UTC as state.json holds them; the executor shows in the id (local-PID, numbers).
    jobs = Table(title="jobs (UTC)", title_justify="left", show_edge=False, box=None)
    for col in ("job", "submitted", "start", "end", "node-h"):
        jobs.add_column(col, no_wrap=True)
    for job in d["jobs"]:
        starts = job["starts"] or [{"start": None, "end": None, "node_hours": None}]
        for i, a in enumerate(starts):
            hours = f"{a['node_hours']:.3f}" if a["node_hours"] is not None else "?"
            label = (job["job_id"] or "-") + (" resumed" if job["resumed"] else "")
            jobs.add_row(
                label if i == 0 else "",
                _when(job["submitted_at"]) if i == 0 else "",
                _when(a["start"]) if a["start"] else "not started",
                "running" if a.get("running") else _when(a["end"]),
                hours if a["start"] else "-",
            )
    parts.append(jobs if d["jobs"] else Text("jobs: none yet", style="dim"))

    if d["requeues"]:
        req = Table(title="requeues (UTC)", title_justify="left", show_edge=False, box=None)
        for col in ("at", "step", "reason", "job"):
            req.add_column(col)
        for r in d["requeues"]:
            req.add_row(
                _when(r.get("at")), *(str(r.get(k, "-")) for k in ("step", "reason", "job_id"))
            )
        parts.append(req)

    ck = d["checkpoints"]
    if ck["newest"]:
        done = "complete" if ck["newest_complete"] else "incomplete: no .done marker"
        newest = f"{Path(ck['newest']).name} ({done})"
        checkpoints = f"{ck['count']} ({ck['complete']} complete); newest {newest}"
        if ck["best"]:
            checkpoints += "; best.pt"
    else:
        checkpoints = "none yet" + ("; best.pt" if ck["best"] else "")
    m = d["metrics"]
    latest = "  ".join(
        f"{k} {v:.4g}" if isinstance(v, int | float) else f"{k} {v}" for k, v in m["latest"].items()
    )
    facts: list[tuple[str, Any]] = [("checkpoints", checkpoints), ("latest", latest or "-")]
    if m["best_val_miou"] is not None:
        facts.append(("best", f"val mIoU {m['best_val_miou']:.4f} at step {m['best_step']}"))
    if m["results"]:
        res = m["results"]
        facts.append(
            (
                "results",
                "  ".join(
                    f"{k} {res[k]:.4f}"
                    for k in ("miou", "binary_miou", "coarse_miou", "rare_miou")
                    if isinstance(res.get(k), int | float)
                )
                + f"  ({res.get('split', 'test')}, checkpoint {res.get('checkpoint', '-')})",
            )
        )
    parts.append(Text("metrics and checkpoints", style="bold"))
    parts.append(kv(facts))
    parts.append(Text("files", style="bold"))
    console = Console(highlight=False)
    console.print(Group(*parts))
    # Paths and the next command whole, however narrow the terminal: they are copied and pasted.
    paths = [(k, v) for k, v in d["paths"].items() if v]
    width = max(len(k) for k, _ in paths)
    for key, value in paths:
        console.print(Text.assemble((key.ljust(width), "bold"), "  ", value), soft_wrap=True)
    console.print(Text.assemble(("next", "bold"), "  ", (d["next"], "bold cyan")), soft_wrap=True)
