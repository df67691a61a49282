"""The `hcli` command line: thin Typer sub-apps, each delegating to a plain importable function.

Errors raised on purpose (`hcli.errors.HcliError`) become one line on stderr and an exit code
here, at the edge; `HCLI_DEBUG=1` shows the traceback instead. Heavy modules (pydantic specs,
h5py, torch) are imported inside commands so `hcli --help` stays fast. The command modules do
not use `from __future__ import annotations`: typer would then `eval` every option's string
annotation on each call (~20 ms of `hcli status`, benchmarks/bench_cli.py).
"""

from __future__ import annotations

import os
import sys

import typer

from hcli.cli import collect as _collect
from hcli.cli import data as _data
from hcli.cli import doctor as _doctor
from hcli.cli import runs as _runs
from hcli.cli import spec as _spec

__all__ = ["app", "main"]

app = typer.Typer(
    name="hcli",
    help="Damage-segmentation studies on ARTeFACT: data, specs, jobs on SLURM or locally, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
app.add_typer(_spec.app, name="spec", help="Show, validate and describe experiment specs.")
app.add_typer(_data.app, name="data", help="Synthesize, prepare, inspect and split ARTeFACT data.")
_runs.register(app)
_doctor.register(app)
_collect.register(app)


def _debug() -> bool:
    return os.environ.get("HCLI_DEBUG", "") not in ("", "0", "false")


def main(argv: list[str] | None = None) -> None:
    from hcli.errors import HcliError

    try:
        app(args=argv, prog_name="hcli")
    except HcliError as exc:
        if _debug():
            raise
        _fail(str(exc), exc.exit_code)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if _debug():
            raise
        _fail(f"{exc.strerror}: {exc.filename}; check the path", 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    for line in message.splitlines() or [message]:
        sys.stderr.write(f"error: {line}\n")
    if code == 1:
        sys.stderr.write("(set HCLI_DEBUG=1 to see the traceback)\n")
    raise SystemExit(code)
