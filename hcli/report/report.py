"""`collect`: run folders in, a report folder out (report.md, tables/, figures/, report.json).

Nothing is written inside a run folder. Everything is sorted and no file holds a timestamp or
the output path, so two collects of the same runs write identical files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcli.errors import UserError
from hcli.fsutil import atomic_write_text
from hcli.report.load import RunRecord, load_runs
from hcli.report.tables import (
    DEFAULT_GROUP_BY,
    FORMATS,
    Table,
    build_groups,
    build_tables,
    rare_classes,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
)

__all__ = ["CollectResult", "collect", "parse_formats"]

# What a previous collect wrote into the same folder, cleared so no stale figure survives.
_OUTPUTS = ("report.md", "report.json", "tables", "figures")


@dataclass
class CollectResult:
    out: Path
    report: Path
    runs: list[RunRecord]
    tables: list[Table]
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "report": str(self.report),
            "runs": [r.summary() for r in self.runs],
            "tables": {t.name: to_json(t) for t in self.tables},
            "files": [str(p) for p in self.files],
            "warnings": self.warnings,
        }


def parse_formats(text: str) -> set[str]:
    """`md,csv` → {"md", "csv"}; `tex` is accepted for latex."""
    wanted = {f.strip().lower() for f in text.split(",") if f.strip()}
    wanted = {"latex" if f == "tex" else f for f in wanted}
    unknown = sorted(wanted - set(FORMATS))
    if unknown or not wanted:
        raise UserError(
            f"--format {text!r}: unknown format {', '.join(unknown) or '(none given)'}; "
            f"use a comma-separated subset of {','.join(FORMATS)}"
        )
    return wanted


def _check_out(out: Path, runs: list[Path]) -> None:
    for run in runs:
        run = run.resolve()
        if out == run or run in out.parents:
            raise UserError(
                f"--out {out} is inside the run folder {run}; collect never writes into a run "
                "folder, choose another --out"
            )


def _clear_previous(out: Path) -> None:
    if not (out / "report.md").is_file():
        return
    for name in _OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def collect(runs: list[Path], out: Path, formats: set[str],
            group_by: str | None = None, figures: bool = True) -> CollectResult:
    """Read `runs`, write the report under `out`; returns what was written (`figures=False`:
    tables only, no matplotlib: seconds instead of minutes over thousands of runs)."""
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise UserError(f"unknown format {', '.join(bad)}; use a subset of {','.join(FORMATS)}")
    if not runs:
        raise UserError("no runs to collect; pass run folders or globs, or check --runs-dir")
    group_by = group_by or DEFAULT_GROUP_BY
    out = Path(out).resolve()
    _check_out(out, runs)
    # Probe runs check nodes; they have no metrics to tabulate.
    records = [r for r in load_runs(runs) if r.kind != "probe"]
    if not records:
        raise UserError("only probe runs matched; nothing to tabulate (probe results are in "
                        "each run's results.json)")
    tables = build_tables(records, group_by)
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)

    files: list[Path] = []

    def write(rel: str, text: str) -> None:
        atomic_write_text(out / rel, text)
        files.append(out / rel)

    for t in tables:
        if "md" in formats:
            write(f"tables/{t.name}.md", to_markdown(t, heading=True))
        if "csv" in formats:
            write(f"tables/{t.name}.csv", to_csv(t))
        if "latex" in formats:
            write(f"tables/{t.name}.tex", to_latex(t))

    drawn = _figures(records, group_by, out / "figures") if figures else []
    files += [p for _, paths in drawn for p in paths]
    warnings = _warnings(records)
    report = out / "report.md"
    write("report.md", _report_md(records, tables, drawn, group_by, out, warnings))
    if "json" in formats:
        doc = {
            "group_by": group_by,
            "runs": [r.summary() for r in records],
            "tables": [to_json(t) for t in tables],
            "figures": [str(p.relative_to(out)) for _, paths in drawn for p in paths],
            "warnings": warnings,
        }
        write("report.json", json.dumps(doc, indent=2) + "\n")
    return CollectResult(out, report, records, tables, sorted(files), warnings)


def _figures(records: list[RunRecord], group_by: str,
             folder: Path) -> list[tuple[str, list[Path]]]:
    """(section, files) pairs in report order; sections: per_class, confusion:<label>, ..."""
    from hcli.report import figures as fig

    groups = build_groups(records, group_by)
    made: list[tuple[str, list[Path]]] = []
    if any(r.per_class_iou for g in groups for r in g.runs):
        made.append(("per_class", fig.per_class_bars(groups, rare_classes(records),
                                                     folder / "per_class_iou")))
    if any(r.adapt is not None and r.usable for r in records):
        from hcli.report.adaptation import adaptation_figure

        made.append(("adaptation", adaptation_figure(records, group_by,
                                                     folder / "adaptation_shots")))
    used: set[str] = set()
    for g in groups:
        mean = fig.mean_confusion(g.runs)
        if mean is not None:
            matrix, n = mean
            stem = fig.group_stem("confusion_", g.label, used)
            title = f"{g.label}: normalised confusion (rows sum to 1), mean of {n} run(s)"
            made.append((f"confusion:{g.label}", fig.confusion_figure(matrix, title,
                                                                      folder / stem)))
    for r in records:
        if r.train_curve or r.val_curve:
            made.append((f"curves:{r.run_id}",
                         fig.learning_curves(r, folder / f"curves_{r.run_id}")))
    for r in records:
        if r.samples:
            made.append((f"samples:{r.run_id}",
                         fig.qualitative_grid(r, folder / f"samples_{r.run_id}")))
    return made


def _warnings(records: list[RunRecord]) -> list[str]:
    out = [f"{r.run_id}: {w}" for r in records for w in r.warnings]
    for r in records:
        if not r.usable:
            why = "failed before results" if r.failed else "no results or validation yet"
            out.append(f"{r.run_id}: {r.state}, {why}; left out of the aggregate tables")
    return out


def _report_md(records: list[RunRecord], tables: list[Table],
               figures: list[tuple[str, list[Path]]], group_by: str, out: Path,
               warnings: list[str]) -> str:
    by_name = {t.name: t for t in tables}
    done = sum(r.source == "test" for r in records)
    partial = sum(r.in_progress for r in records)
    failed = sum(r.failed and r.source != "test" for r in records)

    def png(section: str) -> list[tuple[str, str]]:
        return [(s, str(p.relative_to(out))) for s, paths in figures if s.split(":")[0] == section
                for p in paths if p.suffix == ".png"]

    def table(name: str) -> list[str]:
        t = by_name[name]
        return [to_markdown(t)]

    lines = [
        "# Study report",
        "",
        f"{len(records)} run(s): {done} with results, {partial} in progress, {failed} failed "
        f"or cancelled. Groups: runs with the same resolved spec except `seed` and `data.fold` "
        f"(aggregated as mean ± std), labelled by `{group_by}`. Tables also in `tables/`.",
        "",
        "## Runs",
        "",
        *table("runs"),
        f"## {by_name['comparison'].title}",
        "",
        *table("comparison"),
        "## Per-class IoU",
        "",
    ]
    lines += [f"![Per-class IoU]({p})\n" for _, p in png("per_class")]
    lines += ["### By group", "", *table("per_class_groups"), "### By run", "",
              *table("per_class_runs")]
    lines += ["## Ablations", ""]
    ablations = [t for t in tables if t.name.startswith("ablation_")]
    if not ablations:
        lines += ["No two groups differ in only a few spec fields (besides "
                  f"`{group_by}`, which the comparison covers).", ""]
    for t in ablations:
        lines += [f"### {t.title}", "", to_markdown(t)]
    if "domain" in by_name:
        lines += [f"## {by_name['domain'].title}", "", *table("domain")]
    if "adaptation" in by_name:
        lines += [f"## {by_name['adaptation'].title}", "", *table("adaptation")]
        lines += [f"![held-out mIoU against shots]({p})\n" for _, p in png("adaptation")]
        lines += [f"### {by_name['adaptation_compute'].title}", "",
                  *table("adaptation_compute")]
    sections = (("confusion", "Confusion matrices"), ("curves", "Learning curves"),
                ("samples", "Qualitative samples (image | ground truth | prediction)"))
    for section, heading in sections:
        shown = png(section)
        if shown:
            lines += [f"## {heading}", ""]
            for s, p in shown:
                name = s.split(":", 1)[1]
                lines += [f"### {name}", "", f"![{name}]({p})", ""]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"
