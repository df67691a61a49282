"""Collect's pretraining tables: masked-image pretraining runs (kind mae) with their own figures,
and fine-tuning runs compared by where their encoder started (MAE, ImageNet, scratch).

A pretraining run's figures are its results.json (hcli.contract.MaeResults), read here through
the one JSON reader; a fine-tuning run's start is read from its resolved spec
(`model.init_from`, `model.pretrained`) and, for an MAE start, whether that source saw the fold's
test images (the run's own results' `transductive` / `init_transductive`, else the source's
`transductive`), so a transductive start is never shown unmarked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hcli.fsutil import read_json
from hcli.report.load import RunRecord
from hcli.report.tables import Column, Stat, Table, show

__all__ = ["init_source", "pretraining_tables"]


def _mae_results(path: Path) -> dict[str, Any] | None:
    raw = read_json(path / "results.json")
    return raw if isinstance(raw, dict) and raw.get("kind") == "mae" else None


def init_source(r: RunRecord, by_id: dict[str, RunRecord]) -> str:
    """Where a fine-tuning run's encoder started: "MAE", "MAE (transductive)", "ImageNet",
    "scratch" (or "checkpoint" for a bare file)."""
    ref = r.flat.get("model.init_from")
    if ref:
        source = by_id.get(str(ref)) or by_id.get(Path(str(ref)).parent.name)
        if source is None or source.kind != "mae":
            return "checkpoint"
        res = _mae_results(source.path) or {}
        # The run's own results say whether its chain saw its test images (any fold); the
        # source's flag covers runs written before results carried it.
        saw = r.transductive is not None or res.get("transductive")
        return "MAE (transductive)" if saw else "MAE"
    pretrained = r.flat.get("model.pretrained")
    return "ImageNet" if pretrained not in (None, False, "false", "False") else "scratch"


def pretraining_tables(records: list[RunRecord]) -> list[Table]:
    mae = [(r, _mae_results(r.path)) for r in records if r.kind == "mae"]
    tables = []
    rows = [{"run_id": r.run_id, "backbone": r.backbone, "fold": r.fold,
             "images": str(res.get("images")) + (" (transductive)" if res.get("transductive")
                                                 else ""),
             "recon": res.get("recon_loss"), "neighbour": res.get("baseline_neighbour_mean_loss"),
             "oracle": res.get("baseline_patch_mean_loss"), "seen": res.get("images_seen"),
             "epochs": round(float(res.get("epochs") or 0), 1), "step": res.get("step")}
            for r, res in mae if res is not None]
    if rows:
        tables.append(Table(
            "pretraining", "Masked-image pretraining",
            [Column("run_id", "run"), Column("backbone", "backbone"), Column("fold", "fold"),
             Column("images", "images"), Column("recon", "held-out recon loss"),
             Column("neighbour", "neighbour-mean baseline"),
             Column("oracle", "own-mean baseline"), Column("seen", "crops seen", "int"),
             Column("epochs", "epochs"), Column("step", "step")],
            rows,
            "Loss on the hidden pixels of the validation images (masked-pixel L1 or MSE, as the "
            "run's mae.loss). Baselines: every hidden patch filled with the mean colour of its "
            "visible neighbours (a prediction), or with its own true mean colour (an oracle).",
        ))
    by_id = {r.run_id: r for r in records}
    tuned = [r for r in records if r.kind == "multiclass" and r.usable]
    if any(r.flat.get("model.init_from") for r in tuned):
        groups: dict[tuple[str, str], list[RunRecord]] = {}
        for r in tuned:
            groups.setdefault((show(r.backbone), init_source(r, by_id)), []).append(r)
        out = []
        for (backbone, start), runs in sorted(groups.items()):
            out.append({"backbone": backbone, "start": start, "runs": len(runs),
                        "miou": Stat.of(r.miou for r in runs),
                        "rare": Stat.of(r.rare_miou for r in runs)})
        tables.append(Table(
            "init_ablation", "Fine-tuning by encoder start",
            [Column("backbone", "backbone"), Column("start", "encoder start"),
             Column("runs", "runs", "int"), Column("miou", "mIoU", "pct"),
             Column("rare", "rare mIoU", "pct")],
            out,
            "Multiclass runs grouped by where their encoder started: an MAE run "
            "(model.init_from), ImageNet weights (model.pretrained) or random. IoU in %.",
        ))
    return tables
