"""`hcli status --pipeline NAME`: a pipeline's runs grouped by stage (hcli.study._pipeline)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["show_pipeline"]

NOT_SUBMITTED = "NOT SUBMITTED"


def show_pipeline(root: Path, name: str, *, kind: str | None, state: str | None,
                  json_out: bool) -> None:
    from hcli.cli._status_view import _color_wanted, format_table
    from hcli.errors import UserError
    from hcli.status import select_rows
    from hcli.study._pipeline import read_record, records

    record = read_record(root, name)
    if record is None:
        known = ", ".join(r["study"] for r in records(root)) or "none yet"
        raise UserError(f"--pipeline {name}: no pipeline of that name under {root} (submitted: "
                        f"{known}); submit it with `hcli submit pipeline STUDY`")
    stages: dict[str, Any] = record["stages"]
    ids = {rid for s in stages.values() for rid in s.get("runs", [])}
    rows, _ = select_rows(root, kind=kind, state=state, runs=ids)
    by_id = {r["run_id"]: r for r in rows}
    out = []
    for stage, s in stages.items():
        runs = s.get("runs", [])
        shown = [by_id[r] for r in runs if r in by_id]
        missing = [r for r in runs if not (root / r / "state.json").exists()]
        counts = Counter(r["state"] for r in shown)
        if missing and not state and not kind:
            counts[NOT_SUBMITTED] = len(missing)
        out.append({"stage": stage, "kind": s.get("kind"), "needs": s.get("needs", []),
                    "counts": dict(counts), "runs": shown, "not_submitted": missing})
    if json_out:
        sys.stdout.write(json.dumps({"pipeline": name, "file": record.get("file"),
                                     "stages": out}, default=str, indent=1) + "\n")
        return
    color = _color_wanted()
    lines = [f"pipeline {name} ({record.get('file')})"]
    for s in out:
        needs = f" after {', '.join(s['needs'])}" if s["needs"] else ""
        summary = ", ".join(f"{n} {st}" for st, n in sorted(s["counts"].items())) or "no runs"
        lines.append(f"\n== {s['stage']} ({s['kind']}){needs}: {summary}")
        if s["runs"]:
            table = format_table(s["runs"], root, color, filtered=True)
            lines.extend(table.splitlines()[1:])  # the runs root is said once, above
        if s["not_submitted"] and not state and not kind:
            lines.append(f"{len(s['not_submitted'])} run(s) not submitted yet: "
                         f"`hcli submit pipeline {record.get('file')}`")
    sys.stdout.write("\n".join(lines) + "\n")
