"""The small exception hierarchy of hcli.

Every message says what is wrong *and* how to fix it. Exceptions travel as they are through the
library; only the CLI edge (`hcli.cli.main`) turns a `UserError` into one line and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "HcliError",
    "UserError",
    "SpecError",
    "DataError",
    "RunError",
    "ClusterError",
    "EXIT_USER_ERROR",
]

EXIT_USER_ERROR = 2


class HcliError(Exception):
    """Base of every error hcli raises on purpose."""

    exit_code = 1


class UserError(HcliError):
    """Bad input from the user (a spec, a path, a flag): exit code 2, one line, no traceback."""

    exit_code = EXIT_USER_ERROR


class SpecError(UserError):
    """An experiment spec that does not validate; the message names the key."""


class DataError(UserError):
    """A dataset or data file that cannot be used; the message names the file."""


class RunError(UserError):
    """A run folder or run id that does not allow what was asked."""


class ClusterError(HcliError):
    """The scheduler refused or failed (sbatch, squeue, scancel)."""
