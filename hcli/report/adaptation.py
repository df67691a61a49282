"""Collect's adaptation tables and figure: ERM against meta-learning on unseen domains.

An adaptation run (`kind: adapt`, docs/dg.md) names its source run and the source's kind in its
results.json; the *approach* is that kind (multiclass = ERM, meta = meta-learning). Per held-out
domain and number of shots, the table shows the source's in-domain validation mIoU, the held-out
mIoU over the adaptation seeds, the gap between them, and the change against zero shots; the
compute table sums GPU-hours and node-hours per approach over its sources and its adaptation runs,
per held-out domain and in total. Built from the same run records as every other table.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from hcli.report.load import RunRecord
from hcli.report.tables import Column, Stat, Table, show

__all__ = ["adaptation_curves", "adaptation_figure", "adaptation_tables"]

_APPROACH = {"multiclass": "ERM", "meta": "meta"}
_ALL = "(all held out)"
_UNITS = "IoU in %; mean ± sample std (ddof=1) where n > 1."


def _adapt_runs(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.usable and r.adapt is not None]


def _approach(r: RunRecord) -> str:
    kind = str((r.adapt or {}).get("source_kind"))
    name = _APPROACH.get(kind, kind)
    return name + (" (transductive)" if (r.adapt or {}).get("source_transductive") else "")


def _series(records: list[RunRecord], group_by: str) -> dict[tuple[str, str, str],
                                                             list[RunRecord]]:
    """(approach, `group_by` value, protocol) → its adaptation runs."""
    out: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for r in _adapt_runs(records):
        out[(_approach(r), show(r.flat.get(group_by)), str(r.protocol))].append(r)
    return dict(sorted(out.items()))


def _domain(r: RunRecord) -> str:
    return r.held_out or f"fold {r.fold}"


def adaptation_curves(records: list[RunRecord], group_by: str
                      ) -> dict[tuple[str, str, str], list[tuple[int, Stat]]]:
    """Per series, (shots, held-out mIoU over the held-out domains' means) by shots."""
    curves = {}
    for key, runs in _series(records, group_by).items():
        points = []
        for shots in sorted({r.adapt["shots"] for r in runs}):  # type: ignore[index]
            means = [Stat.of(r.miou for r in runs if r.adapt["shots"] == shots  # type: ignore[index]
                             and _domain(r) == d) for d in sorted({_domain(r) for r in runs})]
            st = Stat.of(m.mean for m in means if m is not None)
            if st is not None:
                points.append((shots, st))
        curves[key] = points
    return curves


def adaptation_tables(records: list[RunRecord], group_by: str) -> list[Table]:
    """`adaptation` (held-out mIoU by domain and shots) and `adaptation_compute`; none without
    adaptation runs."""
    series = _series(records, group_by)
    if not series:
        return []
    by_id = {r.run_id: r for r in records}
    rows: list[dict[str, Any]] = []
    cost: list[dict[str, Any]] = []
    for (approach, label, protocol), runs in series.items():
        domains = sorted({_domain(r) for r in runs})
        zero: dict[str, float] = {}
        for domain in [*domains, _ALL]:
            cell = runs if domain == _ALL else [r for r in runs if _domain(r) == domain]
            for shots in sorted({r.adapt["shots"] for r in cell}):  # type: ignore[index]
                sr = [r for r in cell if r.adapt["shots"] == shots]  # type: ignore[index]
                if domain == _ALL:
                    held = Stat.of(
                        st.mean for d in domains
                        if (st := Stat.of(r.miou for r in sr if _domain(r) == d)) is not None)
                    src_val = Stat.of(
                        st.mean for d in domains
                        if (st := _source_stat(sr, d)) is not None)
                    if len(domains) < 2:
                        continue
                else:
                    held = Stat.of(r.miou for r in sr)
                    src_val = _source_stat(sr, None)
                if held is not None and shots == 0:
                    zero[domain] = held.mean
                rows.append({
                    "approach": approach, "label": label, "protocol": protocol,
                    "held_out": domain, "shots": shots, "runs": len(sr),
                    "seeds": len({r.seed for r in sr}),
                    "in_domain": src_val, "miou": held,
                    "gap": held.mean - src_val.mean if held and src_val else None,
                    "vs_zero": held.mean - zero[domain] if held and domain in zero else None,
                })
        cost += _cost_rows(approach, label, protocol, runs, domains, by_id)
    cols = [Column("approach", "approach"), Column("label", group_by),
            Column("protocol", "protocol"), Column("held_out", "held out"),
            Column("shots", "shots", "int"), Column("runs", "runs", "int"),
            Column("seeds", "seeds", "int"),
            Column("in_domain", "source in-domain val mIoU", "pct"),
            Column("miou", "held-out mIoU", "pct"), Column("gap", "gap", "pct"),
            Column("vs_zero", "Δ vs 0-shot", "pct")]
    note = ("Held-out mIoU: on the held-out domain without the support images, mean ± std over "
            "adaptation seeds; `(all held out)`: mean ± std over the domains' means. Source "
            "in-domain val mIoU: the source run's best validation on its training domains. "
            "gap = held-out − in-domain; Δ vs 0-shot = k-shot − 0-shot held-out mean. ERM: "
            "multiclass sources; meta: meta-learning sources. " + _UNITS)
    ccols = [Column("approach", "approach"), Column("label", group_by),
             Column("protocol", "protocol"), Column("held_out", "held out"),
             Column("sources", "sources", "int"), Column("adapt_runs", "adaptation runs", "int"),
             Column("source_gpu_h", "source GPU-h", "hours"),
             Column("adapt_gpu_h", "adaptation GPU-h", "hours"),
             Column("gpu_h", "GPU-h (total)", "hours"),
             Column("node_h", "node-h (total)", "hours"),
             Column("missing", "sources not collected", "int")]
    cnote = ("Compute from each run's results.json `compute` (every execution, requeues "
             "included), summed per approach over its source runs and its adaptation runs. A "
             "source shared by several held-out domains (one transductive meta-training) counts "
             "once in the total. `sources not collected`: named by adaptation runs but not among "
             "the collected runs, so not in the sums.")
    return [Table("adaptation", "Adaptation to the held-out domain: ERM vs meta-learning",
                  cols, rows, note),
            Table("adaptation_compute", "Compute per approach (sources + adaptation)",
                  ccols, cost, cnote)]


def _source_stat(runs: list[RunRecord], domain: str | None) -> Stat | None:
    """The in-domain val mIoU of the distinct sources among `runs` (of one domain)."""
    vals: dict[str, float | None] = {}
    for r in runs:
        if r.adapt is not None and (domain is None or _domain(r) == domain):
            vals[r.adapt["source_run"]] = r.adapt.get("source_val_miou")
    return Stat.of(vals.values())


def _hours(runs: list[RunRecord], attr: str) -> float | None:
    values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
    return sum(values) if values else None


def _cost_rows(approach: str, label: str, protocol: str, runs: list[RunRecord],
               domains: list[str], by_id: dict[str, RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for domain in [*domains, "(total)"]:
        cell = runs if domain == "(total)" else [r for r in runs if _domain(r) == domain]
        names = sorted({r.adapt["source_run"] for r in cell})  # type: ignore[index]
        sources = [by_id[n] for n in names if n in by_id]
        parts = [_hours(sources, "gpu_hours"), _hours(cell, "gpu_hours")]
        nodes = [_hours(sources, "node_hours"), _hours(cell, "node_hours")]
        rows.append({
            "approach": approach, "label": label, "protocol": protocol, "held_out": domain,
            "sources": len(names), "adapt_runs": len(cell),
            "source_gpu_h": parts[0], "adapt_gpu_h": parts[1],
            "gpu_h": sum(p for p in parts if p is not None) if any(
                p is not None for p in parts) else None,
            "node_h": sum(p for p in nodes if p is not None) if any(
                p is not None for p in nodes) else None,
            "missing": len(names) - len(sources),
        })
    return rows


def adaptation_figure(records: list[RunRecord], group_by: str, stem: Path) -> list[Path]:
    """Held-out mIoU (%) against shots, one line per approach; bars: std over domains."""
    from hcli.report.figures import DPI, _pyplot, _save

    curves = adaptation_curves(records, group_by)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=ADAPTATION_SIZE, dpi=DPI)
    for (approach, label, protocol), points in curves.items():
        if not points:
            continue
        xs = [s for s, _ in points]
        ys = [st.mean * 100 for _, st in points]
        errs = [(st.std or 0.0) * 100 for _, st in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3,
                    label=f"{approach} {label} ({protocol})")
    ax.set_xlabel("support images (shots)")
    ax.set_ylabel("held-out mIoU (%)")
    ax.set_title("Adaptation to the held-out domain (mean over domains, std as bars)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, stem)


ADAPTATION_SIZE = (8.0, 5.0)
