"""The `hcli` command line: thin Typer sub-apps, each delegating to a plain importable function.

Errors raised on purpose (`hcli.errors.HcliError`) become one line on stderr and an exit code
here, at the edge; `HCLI_DEBUG=1` shows the traceback instead. Heavy modules (pydantic specs,
h5py, torch) are imported inside commands so `hcli --help` stays fast, and the Typer app itself
(`hcli.cli._app`) is built only when needed: plain `hcli status` calls skip it
(`hcli.cli._fast`), and so does `hcli --version`. The command modules do not use
`from __future__ import annotations`: typer would then `eval` every option's string annotation
on each call (~20 ms of `hcli status`, benchmarks/bench_cli.py).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

__all__ = ["app", "main"]

app: typer.Typer


def __getattr__(name: str) -> Any:
    # PEP 562: `from hcli.cli import app` still works, and builds the app on first use.
    if name == "app":
        from hcli.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _debug() -> bool:
    return os.environ.get("HCLI_DEBUG", "") not in ("", "0", "false")


def main(argv: list[str] | None = None) -> None:
    from hcli.cli._fast import try_status
    from hcli.errors import HcliError

    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:  # without typer: what scripts and bug reports ask first
        from hcli import __version__

        sys.stdout.write(f"hcli {__version__}\n")
        return
    try:
        if not try_status(args):
            from hcli.cli._app import app

            app(args=args, prog_name="hcli")
    except HcliError as exc:
        if _debug():
            raise
        _fail(str(exc), exc.exit_code)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if _debug():
            raise
        _fail(f"{exc.strerror}: {exc.filename}; check the path", 2)
    except BrokenPipeError:
        # `hcli status | head`: the reader left. Quiet exit 1, as click does on its path; the
        # interpreter's final flush of stdout must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    for line in message.splitlines() or [message]:
        sys.stderr.write(f"error: {line}\n")
    if code == 1:
        sys.stderr.write("(set HCLI_DEBUG=1 to see the traceback)\n")
    raise SystemExit(code)
