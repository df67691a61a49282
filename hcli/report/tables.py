"""The study's tables from run records, and their renderers (markdown, csv, latex, json).

Runs that compute the same thing except for `seed` and `data.fold` form a *group*; groups carry
mean ± sample std (ddof=1) over their runs. Ablations and the domain table are derived from the
resolved specs (flattened to dotted keys), never from run names.
"""

from __future__ import annotations

import csv
import io
import itertools
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hcli.classes import CLASS_NAMES
from hcli.errors import UserError
from hcli.report.load import AGGREGATED_KEYS, DEFAULT_RARE_CLASSES, RunRecord, config_key

__all__ = [
    "DEFAULT_GROUP_BY",
    "FORMATS",
    "Column",
    "Group",
    "Stat",
    "Table",
    "ablation_tables",
    "build_groups",
    "build_tables",
    "class_iou",
    "comparison_table",
    "domain_table",
    "per_class_table",
    "rare_classes",
    "runs_table",
    "to_csv",
    "to_json",
    "to_latex",
    "to_markdown",
]

DEFAULT_GROUP_BY = "model.backbone"
FORMATS = ("md", "csv", "latex", "json")
RARE_MARK = "†"
# Ablations over more fields than this are confounded comparisons rather than ablations.
MAX_ABLATION_FIELDS = 3
# Fields that only name *which* held-out part a fold protocol tests; the domain table spans them.
_DOMAIN_KEYS = ("data.protocol", "data.fold", "data.k", "data.groups_file", "seed")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; None for a single value) over n runs."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return None
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None,
                   len(vals))


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    fmt: str = "text"  # text | int | pct | hours
    compact: bool = False  # md/latex show the mean only (wide tables); csv/json keep the std


@dataclass
class Table:
    name: str  # file stem
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    note: str = ""


@dataclass
class Group:
    """Runs identical in every field that changes results, except seed and fold."""

    config: dict[str, Any]
    runs: list[RunRecord]
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(self.config.items()))

    def stat(self, get: Callable[[RunRecord], float | None]) -> Stat | None:
        return Stat.of(get(r) for r in self.runs)

    @property
    def partial(self) -> int:
        return sum(r.in_progress for r in self.runs)


def _sort_value(value: Any) -> tuple[int, Any]:
    """Mixed-type values (None, numbers, strings, tuples) in one stable order."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (1, float(value))
    return (2, str(value))


def show(value: Any) -> str:
    """A spec value as a short string for labels and cells."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


_MISSING = object()


def varying_fields(configs: list[dict[str, Any]]) -> list[str]:
    keys = sorted(set().union(*configs)) if configs else []
    return [k for k in keys if len({repr(c.get(k, _MISSING)) for c in configs}) > 1]


def _short_names(fields: list[str]) -> dict[str, str]:
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last, strict=True)}


def build_groups(records: list[RunRecord], group_by: str = DEFAULT_GROUP_BY) -> list[Group]:
    """Usable runs grouped by their configuration, labelled by `group_by` and the other fields
    that vary between groups; sorted by `group_by`, then by those fields."""
    if records and not any(group_by in r.flat for r in records):
        raise UserError(
            f"--group-by {group_by}: no run's spec has that field; give a dotted spec key such as "
            f"{DEFAULT_GROUP_BY} or loss.class_weights (`hcli spec show` lists them)"
        )
    drop = tuple(k for k in AGGREGATED_KEYS if k != group_by)
    by_key: dict[tuple[tuple[str, Any], ...], Group] = {}
    for rec in records:
        if not rec.usable:
            continue
        cfg = config_key(rec.flat, drop)
        cfg[group_by] = rec.flat.get(group_by)
        grp = by_key.setdefault(tuple(sorted(cfg.items(), key=lambda kv: kv[0])), Group(cfg, []))
        grp.runs.append(rec)
    groups = list(by_key.values())
    others = [f for f in varying_fields([g.config for g in groups]) if f != group_by]
    names = _short_names(others)
    for g in groups:
        g.label = show(g.config.get(group_by))
        if others:
            g.label += " (" + ", ".join(f"{names[f]}={show(g.config.get(f))}" for f in others) + ")"
        g.runs.sort(key=lambda r: r.run_id)
    groups.sort(key=lambda g: [_sort_value(g.config.get(f)) for f in (group_by, *others)]
                + [g.label])
    return groups


_METRICS: list[tuple[Column, Callable[[RunRecord], float | None]]] = [
    (Column("miou", "mIoU", "pct"), lambda r: r.miou),
    (Column("binary_miou", "binary mIoU", "pct"), lambda r: r.binary_miou),
    (Column("rare_miou", "rare mIoU", "pct"), lambda r: r.rare_miou),
    (Column("best_val_miou", "best val mIoU", "pct"), lambda r: r.best_val_miou),
]
_UNITS = "IoU in %; mean ± sample std (ddof=1) over folds and seeds where n > 1."


def runs_table(records: list[RunRecord]) -> Table:
    cols = [
        Column("run_id", "run"), Column("kind", "kind"), Column("backbone", "backbone"),
        Column("protocol", "protocol"), Column("fold", "fold", "int"),
        Column("seed", "seed", "int"), Column("state", "state"), Column("step", "step"),
        Column("best_val_miou", "best val mIoU", "pct"),
        Column("last_val_miou", "last val mIoU", "pct"), Column("source", "from"),
        Column("miou", "mIoU", "pct"), Column("binary_miou", "binary mIoU", "pct"),
        Column("rare_miou", "rare mIoU", "pct"), Column("node_hours", "node-h", "hours"),
        Column("restarts", "restarts", "int"),
    ]
    rows = []
    for r in records:
        step = None if r.step is None else str(r.step)
        if step is not None and r.total_steps:
            step += f"/{r.total_steps}"
        rows.append({
            "run_id": r.run_id, "kind": r.kind, "backbone": r.backbone, "protocol": r.protocol,
            "fold": r.fold, "seed": r.seed, "state": r.status, "step": step,
            "best_val_miou": r.best_val_miou, "last_val_miou": r.last_val_miou,
            "source": {"test": "test", "val": "last val"}.get(r.source or ""),
            "miou": r.miou, "binary_miou": r.binary_miou, "rare_miou": r.rare_miou,
            "node_hours": r.node_hours, "restarts": r.restarts, "transductive": r.transductive,
        })
    note = (
        "IoU in %. `from`: test = results.json; last val = the run has no results yet and its "
        "latest validation stands in. node-h: every execution of the run (requeues "
        "included), from results.json, else from the executions state.json records, else "
        "from log timestamps (a lower bound)."
    )
    if any(r.transductive for r in records):
        # Loud only where it applies: the column exists when a run saw its test images.
        cols.insert(cols.index(Column("source", "from")) + 1, Column("transductive", "saw test"))
        note += (" saw test: the run, or the run of its model.init_from chain named, saw this "
                 "fold's test images before its score (transductive; not a held-out score).")
    return Table("runs", "Runs", cols, rows, note)


def _field_columns(fields: list[str]) -> list[Column]:
    return [Column(f, f) for f in fields]


def _group_metric_row(g: Group) -> dict[str, Any]:
    row: dict[str, Any] = {
        "runs": len(g.runs),
        "folds": len({r.fold for r in g.runs}),
        "seeds": len({r.seed for r in g.runs}),
    }
    for col, get in _METRICS:
        row[col.key] = g.stat(get)
    hours = [r.node_hours for r in g.runs if r.node_hours is not None]
    row["node_hours"] = sum(hours) if hours else None
    row["partial"] = g.partial
    return row


_GROUP_COLS = [Column("runs", "runs", "int"), Column("folds", "folds", "int"),
               Column("seeds", "seeds", "int"), *(c for c, _ in _METRICS),
               Column("node_hours", "node-h (sum)", "hours"),
               Column("partial", "in progress", "int")]


def _fixed_note(groups: list[Group], fields: Iterable[str]) -> str:
    fixed = []
    for f in fields:
        values = {show(g.config.get(f)) for g in groups}
        if len(values) == 1:
            fixed.append(f"{f}={values.pop()}")
    return ("All rows: " + ", ".join(fixed) + ". ") if fixed else ""


def comparison_table(groups: list[Group], group_by: str = DEFAULT_GROUP_BY) -> Table:
    others = [f for f in varying_fields([g.config for g in groups]) if f != group_by]
    rows = []
    for g in groups:
        row = {group_by: show(g.config.get(group_by))}
        row.update({f: show(g.config.get(f)) for f in others})
        row.update(_group_metric_row(g))
        rows.append(row)
    note = _fixed_note(groups, ("kind", "data.protocol")) + _UNITS + (
        " `in progress`: runs whose latest validation stands in for results."
    )
    return Table("comparison", f"Comparison across {group_by}",
                 _field_columns([group_by, *others]) + _GROUP_COLS, rows, note)


def class_iou(name: str) -> Callable[[RunRecord], float | None]:
    """A getter of one class's IoU, for `Group.stat`."""

    def get(r: RunRecord) -> float | None:
        return r.per_class_iou.get(name)

    return get


def rare_classes(records: list[RunRecord]) -> list[str]:
    named = sorted({c for r in records for c in r.rare_classes})
    return named or list(DEFAULT_RARE_CLASSES)


def _class_columns(rare: list[str]) -> list[Column]:
    return [Column(name, name + (RARE_MARK if name in rare else ""), "pct", compact=True)
            for name in CLASS_NAMES]


def _rare_note(rare: list[str]) -> str:
    return f"{RARE_MARK} rare class ({', '.join(rare)}). IoU in %; –: class absent."


def per_class_table(groups: list[Group], rare: list[str]) -> Table:
    rows = []
    for g in groups:
        row: dict[str, Any] = {"label": g.label, "runs": len(g.runs)}
        for name in CLASS_NAMES:
            row[name] = g.stat(class_iou(name))
        rows.append(row)
    cols = [Column("label", "group"), Column("runs", "runs", "int"), *_class_columns(rare)]
    note = _rare_note(rare) + " Means over the group's runs (csv/json also hold the std)."
    return Table("per_class_groups", "Per-class IoU by group", cols, rows, note)


def per_class_runs_table(records: list[RunRecord], rare: list[str]) -> Table:
    rows = []
    for r in records:
        if not r.per_class_iou:
            continue
        row: dict[str, Any] = {"run_id": r.run_id + (" *" if r.in_progress else "")}
        row.update({name: r.per_class_iou.get(name) for name in CLASS_NAMES})
        rows.append(row)
    cols = [Column("run_id", "run"), *_class_columns(rare)]
    note = _rare_note(rare) + " `*`: in progress (latest validation)."
    return Table("per_class_runs", "Per-class IoU by run", cols, rows, note)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def ablation_tables(groups: list[Group], group_by: str = DEFAULT_GROUP_BY) -> list[Table]:
    """One table per set D of (at most a few) fields: groups that differ pairwise in exactly D.

    D = {group_by} alone is the comparison table and is not repeated here.
    """
    diffs: set[tuple[str, ...]] = set()
    for a, b in itertools.combinations(groups, 2):
        d = tuple(varying_fields([a.config, b.config]))
        if 0 < len(d) <= MAX_ABLATION_FIELDS and d != (group_by,):
            diffs.add(d)
    all_varying = [group_by] + [f for f in varying_fields([g.config for g in groups])
                                if f != group_by]
    tables = []
    for d in sorted(diffs, key=lambda x: (len(x), x)):
        cells: dict[str, list[Group]] = {}
        for g in groups:
            ctx = repr(sorted((k, v) for k, v in g.config.items() if k not in d))
            cells.setdefault(ctx, []).append(g)
        members = []
        for cell in cells.values():
            if len(cell) > 1 and all(
                tuple(varying_fields([a.config, b.config])) == d
                for a, b in itertools.combinations(cell, 2)
            ):
                members.append(cell)
        if not members:
            continue
        context = [f for f in varying_fields([g.config for c in members for g in c])
                   if f not in d]
        # Say which configuration the table is about when it varies elsewhere in the report.
        fixed = _fixed_note([g for c in members for g in c],
                            [f for f in all_varying if f not in d and f not in context])
        rows = []
        for cell in members:
            for g in cell:
                row = {f: show(g.config.get(f)) for f in (*context, *d)}
                row.update(_group_metric_row(g))
                rows.append(row)
        rows.sort(key=lambda row: [_sort_value(row[f]) for f in (*context, *d)])
        tables.append(Table(
            "ablation_" + _slug("_".join(d)), ", ".join(d),
            _field_columns([*context, *d]) + _GROUP_COLS, rows, fixed + _UNITS,
        ))
    return tables


def domain_table(records: list[RunRecord], group_by: str = DEFAULT_GROUP_BY) -> Table | None:
    """In-domain (kfold) mIoU against each held-out material or content, and the gap.

    The in-domain figure comes from kfold runs of the same configuration; a configuration with
    none (e.g. a meta-learning run) is compared with the multiclass kfold runs of the same
    `group_by` value.
    """
    # Adaptation runs have their own table (hcli.report.adaptation).
    usable = [r for r in records if r.usable and r.adapt is None]
    if not any(r.protocol not in (None, "kfold") for r in usable):
        return None
    fams: dict[str, list[RunRecord]] = {}
    for r in usable:
        key = config_key(r.flat, _DOMAIN_KEYS)
        key[group_by] = r.flat.get(group_by)
        fams.setdefault(repr(sorted(key.items())), []).append(r)
    configs = {k: config_key(v[0].flat, _DOMAIN_KEYS) | {group_by: v[0].flat.get(group_by)}
               for k, v in fams.items()}
    others = [f for f in varying_fields(list(configs.values())) if f != group_by]
    names = _short_names(others)
    rows = []
    for fk, runs in fams.items():
        cfg = configs[fk]
        label = show(cfg.get(group_by)) + (
            " (" + ", ".join(f"{names[f]}={show(cfg.get(f))}" for f in others) + ")" if others
            else ""
        )
        base = Stat.of(r.miou for r in runs if r.protocol == "kfold")
        base_from = "same config"
        if base is None:
            # In-domain reference: runs of the same kind trained on ordinary k folds.
            base = Stat.of(r.miou for r in usable if r.protocol == "kfold" and r.kind ==
                           runs[0].kind and r.flat.get(group_by) == cfg.get(group_by))
            base_from = f"{runs[0].kind} kfold"
        held = [r for r in runs if r.protocol not in (None, "kfold")]
        for protocol in sorted({str(r.protocol) for r in held}):
            cell = [r for r in held if r.protocol == protocol]
            fold_means = []
            for fold in sorted({r.fold for r in cell}, key=_sort_value):
                fr = [r for r in cell if r.fold == fold]
                st = Stat.of(r.miou for r in fr)
                names_ = sorted({r.held_out for r in fr if r.held_out})
                held_out = names_[0] if names_ else f"fold {fold}"
                fold_means.append(st.mean if st else None)
                rows.append(_domain_row(label, cfg, protocol, held_out, fold, len(fr), st,
                                        base, base_from, sum(r.in_progress for r in fr)))
            if len(fold_means) > 1:
                rows.append(_domain_row(label, cfg, protocol, "(all held out)", None,
                                        len(cell), Stat.of(fold_means), base, base_from,
                                        sum(r.in_progress for r in cell)))
    rows.sort(key=lambda row: (row["label"], row["protocol"], row["_order"]))
    for row in rows:
        del row["_order"]
    cols = [Column("label", group_by), Column("kind", "kind"), Column("protocol", "protocol"),
            Column("held_out", "held out"), Column("runs", "runs", "int"),
            Column("miou", "held-out mIoU", "pct"), Column("in_domain", "in-domain mIoU", "pct"),
            Column("gap", "gap", "pct"), Column("baseline", "in-domain from"),
            Column("partial", "in progress", "int")]
    note = ("gap = held-out mean − in-domain (kfold) mean; negative means the model loses on "
            "the unseen domain. `(all held out)`: mean ± std over the folds' means. " + _UNITS)
    return Table("domain", "Domain shift: in-domain vs held out", cols, rows, note)


def _domain_row(label: str, cfg: dict[str, Any], protocol: str, held_out: str, fold: Any,
                n: int, st: Stat | None, base: Stat | None, base_from: str,
                partial: int) -> dict[str, Any]:
    gap = st.mean - base.mean if st is not None and base is not None else None
    return {
        "label": label, "kind": show(cfg.get("kind")), "protocol": protocol,
        "held_out": held_out, "runs": n, "miou": st, "in_domain": base, "gap": gap,
        "baseline": base_from if base is not None else None, "partial": partial,
        "_order": (1, 0) if fold is None else (0, _sort_value(fold)[1]),
    }


def build_tables(records: list[RunRecord], group_by: str = DEFAULT_GROUP_BY) -> list[Table]:
    """Every table of a report, in report order."""
    groups = build_groups(records, group_by)
    rare = rare_classes(records)
    tables = [runs_table(records), comparison_table(groups, group_by),
              per_class_table(groups, rare), per_class_runs_table(records, rare)]
    tables += ablation_tables(groups, group_by)
    from hcli.report.ablation import ablation_study_table  # it builds on this module

    study = ablation_study_table(groups, group_by)
    tables += [study] if study is not None else []
    dom = domain_table(records, group_by)
    if dom is not None:
        tables.append(dom)
    from hcli.report.adaptation import adaptation_tables  # it builds on this module

    tables += adaptation_tables(records, group_by)
    from hcli.report.pretraining import pretraining_tables  # it builds on this module

    tables += pretraining_tables(records)
    return tables


# ---------------------------------------------------------------- renderers


def _fmt_number(value: float, fmt: str) -> str:
    if fmt == "pct":
        return f"{value * 100:.1f}"
    if fmt == "hours":
        return f"{value:.2f}"
    if fmt == "int":
        return str(int(value))
    return show(value)


def _cell_text(value: Any, col: Column, pm: str = " ± ") -> str:
    if value is None:
        return ""
    if isinstance(value, Stat):
        text = _fmt_number(value.mean, col.fmt)
        if value.std is not None and not col.compact:
            text += pm + _fmt_number(value.std, col.fmt)
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _fmt_number(value, col.fmt)
    return str(value)


def to_markdown(table: Table, heading: bool = False) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"### {table.title}", ""] if heading else []
    lines.append("| " + " | ".join(esc(c.label) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" if c.fmt == "text" else "---:" for c in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(esc(_cell_text(row.get(c.key), c)) or "–"
                                       for c in table.columns) + " |")
    if not table.rows:
        lines.append("| " + " | ".join("" for _ in table.columns) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def _json_value(value: Any) -> Any:
    if isinstance(value, Stat):
        return {"mean": _json_value(value.mean), "std": _json_value(value.std), "n": value.n}
    if isinstance(value, float):
        return round(value, 6)
    return value


def to_json(table: Table) -> dict[str, Any]:
    return {
        "name": table.name, "title": table.title, "note": table.note,
        "columns": [{"key": c.key, "label": c.label} for c in table.columns],
        "rows": [{c.key: _json_value(row.get(c.key)) for c in table.columns}
                 for row in table.rows],
    }


def to_csv(table: Table) -> str:
    """Raw fractions; a column holding mean ± std becomes `<key>` and `<key>_std`."""
    split = {c.key for c in table.columns
             if any(isinstance(r.get(c.key), Stat) for r in table.rows)}
    header: list[str] = []
    for c in table.columns:
        header += [c.key, f"{c.key}_std"] if c.key in split else [c.key]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        out: list[Any] = []
        for c in table.columns:
            v = row.get(c.key)
            if c.key in split:
                out += ([_json_value(v.mean), _json_value(v.std)] if isinstance(v, Stat)
                        else [_json_value(v), ""])
            else:
                out.append("" if v is None else _json_value(v))
        writer.writerow(["" if x is None else x for x in out])
    return buf.getvalue()


# Hand-written rather than pandas' Styler.to_latex: that needs jinja2 and rewrites cells we have
# already formatted; a booktabs tabular is a few lines.
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    RARE_MARK: r"\textsuperscript{\dag}", "±": r"$\pm$", "−": "$-$",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    align = "".join("l" if c.fmt == "text" else "r" for c in table.columns)
    lines = [
        f"% {_latex_escape(table.title)}",
        f"% {_latex_escape(table.note)}" if table.note else "%",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(_latex_escape(c.label) for c in table.columns) + r" \\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = [_latex_escape(_cell_text(row.get(c.key), c)) or "--" for c in table.columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
