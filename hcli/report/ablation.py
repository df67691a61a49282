"""The ablation study's table: every configuration against the baseline, paired over seeds.

The baseline is the group whose varying fields all hold their defaults (configs/ablation.yaml's
`baseline` scenario: no option switched on); each other row is named by the fields in which it
differs from it. The difference to the baseline pairs runs that share a seed and a fold (the
same data order and initialisation up to the option), so run-to-run noise common to both
cancels; its p-value is the paired t-test's (scipy.stats.ttest_rel, two-sided), reported only
with at least two pairs. Compute is the node-hours of the row's runs (every execution).
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

from hcli.report.load import flatten
from hcli.report.tables import Column, Group, Stat, Table, _short_names, show, varying_fields

__all__ = ["ablation_study_table"]


@functools.cache
def _defaults() -> dict[str, Any]:
    from hcli.spec import fill_defaults

    return flatten(fill_defaults({}))


def _paired(g: Group, base: Group) -> tuple[Stat | None, float | None]:
    ours = {(r.seed, r.fold): r.miou for r in g.runs if r.miou is not None}
    theirs = {(r.seed, r.fold): r.miou for r in base.runs if r.miou is not None}
    keys = sorted(set(ours) & set(theirs), key=repr)
    diffs = [ours[k] - theirs[k] for k in keys]
    if not diffs:
        return None, None
    p = None
    if len(diffs) > 1 and statistics.stdev(diffs) > 0:
        from scipy.stats import ttest_rel

        p = float(ttest_rel([ours[k] for k in keys], [theirs[k] for k in keys]).pvalue)
    return Stat.of(diffs), p


def ablation_study_table(groups: list[Group], group_by: str) -> Table | None:
    """None unless the groups share `group_by` and one of them is the all-defaults baseline."""
    if len(groups) < 2 or len({show(g.config.get(group_by)) for g in groups}) != 1:
        return None
    fields = varying_fields([g.config for g in groups])
    defaults = _defaults()
    base = next((g for g in groups
                 if all(g.config.get(f) == defaults.get(f) for f in fields)), None)
    if base is None:
        return None
    names = _short_names(fields)
    order: list[tuple[bool, int]] = []
    rows: list[dict[str, Any]] = []
    for g in groups:
        changed = [f for f in fields if g.config.get(f) != base.config.get(f)]
        delta, p = _paired(g, base) if g is not base else (None, None)
        hours = [r.node_hours for r in g.runs if r.node_hours is not None]
        rows.append({
            "scenario": ", ".join(f"{names[f]}={show(g.config.get(f))}" for f in changed)
            or "baseline",
            "seeds": len({r.seed for r in g.runs}),
            "miou": g.stat(lambda r: r.miou),
            "binary_miou": g.stat(lambda r: r.binary_miou),
            "rare_miou": g.stat(lambda r: r.rare_miou),
            "delta_miou": delta,
            "pairs": delta.n if delta else None,
            "p_value": None if p is None else f"{p:.3f}",
            "node_hours": sum(hours) if hours else None,
        })
        order.append((g is not base, len(changed)))
    rows = [row for _, row in sorted(zip(order, rows, strict=True), key=lambda x: x[0])]
    cols = [Column("scenario", "scenario"), Column("seeds", "seeds", "int"),
            Column("miou", "mIoU", "pct"), Column("binary_miou", "binary mIoU", "pct"),
            Column("rare_miou", "rare mIoU", "pct"),
            Column("delta_miou", "Δ mIoU vs baseline", "pct"), Column("pairs", "pairs", "int"),
            Column("p_value", "p (paired t)"), Column("node_hours", "node-h (sum)", "hours")]
    note = (f"{group_by}={show(base.config.get(group_by))}. IoU in %; mean ± sample std over "
            "seeds (and folds). Δ: mean ± std of the per-seed differences to the baseline run "
            "of the same seed and fold; p: two-sided paired t-test over those pairs.")
    return Table("ablation_study", "Ablation study", cols, rows, note)
