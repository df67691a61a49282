"""`hcli status` without typer: the command people run in loops and in `watch`.

Importing typer and building the command tree is ~90 ms of the 200 ms `hcli status` may take
over 500 runs on a 2-core machine (benchmarks/bench_cli.py), so the plain forms of
`hcli status` (any mix of --json, --kind, --state, --runs-dir) are parsed here and answered by
the same function the Typer command calls (`hcli.cli._status_view.show`). Anything else —
`--help`, `--watch`, a RUN (`hcli status RUN`, one run in detail), an unknown or malformed
option, a value that looks like an option — goes to Typer, which owns the command's definition,
help and errors. An option added to the Typer command is therefore unknown here and simply takes
the Typer path.
"""

from pathlib import Path
from typing import Any

__all__ = ["parse_status_args", "try_status"]

_FLAGS = {"--json": "json_out", "--all": "all_runs"}
_VALUED = {
    "--kind": "kind", "--state": "state", "--since": "since", "--runs-dir": "runs_dir",
}
# A RUN argument with one of these is a glob on run ids (as hcli.status.is_pattern says).
_GLOB = "*?["


def parse_status_args(args: list[str]) -> dict[str, Any] | None:
    """The options of `hcli status ARGS` as the Typer command would receive them, or None when
    ARGS holds anything this parser does not handle exactly like click."""
    opts: dict[str, Any] = {"json_out": False, "all_runs": False, "kind": None, "state": None,
                            "since": None, "runs_dir": None, "pattern": None}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if not name.startswith("-") and any(c in args[i] for c in _GLOB):
            if opts["pattern"] is not None:
                return None  # click's "unexpected extra argument"
            opts["pattern"] = args[i]
        elif name in _FLAGS and not eq:
            opts[_FLAGS[name]] = True
        elif name in _VALUED:
            if not eq:
                i += 1
                if i == len(args):
                    return None  # click's "requires an argument" error
                value = args[i]
            if value.startswith("-"):
                return None  # click would take it as the value; its message is clearer
            opts[_VALUED[name]] = value  # the last one wins, as in click
        else:
            return None
        i += 1
    return opts


def try_status(args: list[str]) -> bool:
    """Answer `hcli ARGS` here when it is a plain `hcli status`; False when Typer must."""
    if args[:1] != ["status"]:
        return False
    opts = parse_status_args(args[1:])
    if opts is None:
        return False
    from hcli.cli._status_view import show
    from hcli.runs_dir import resolve_runs_dir

    runs_dir = opts.pop("runs_dir")
    show(resolve_runs_dir(Path(runs_dir) if runs_dir is not None else None), **opts)
    return True
