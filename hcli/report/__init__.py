"""`hcli collect`: the study's tables and figures from run folders (docs/collect.md).

`load` reads run folders (never writes them), `tables` builds and renders the tables, `figures`
draws them, `report` writes the report folder.
"""

from hcli.report.load import RunRecord, load_run, load_runs, resolve_run_args
from hcli.report.report import CollectResult, collect, parse_formats
from hcli.report.tables import DEFAULT_GROUP_BY, FORMATS, Stat, Table, build_tables

__all__ = [
    "DEFAULT_GROUP_BY",
    "FORMATS",
    "CollectResult",
    "RunRecord",
    "Stat",
    "Table",
    "build_tables",
    "collect",
    "load_run",
    "load_runs",
    "parse_formats",
    "resolve_run_args",
]
