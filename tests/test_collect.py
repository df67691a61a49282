"""`hcli collect` over run folders written by the job's own writers (the run-folder contract's
models, jobs.progress, jobs.results, jobs.runtime): numbers by value, figures, read-only run
folders, identical output across collects, and the CLI path."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hcli.classes import CLASS_NAMES
from hcli.contract import (
    Hardware,
    JobRecord,
    MulticlassResults,
    Progress,
    Requeue,
    State,
    ValSummary,
    dump,
    parse_metrics_line,
)
from hcli.errors import UserError
from hcli.fsutil import atomic_write_json
from hcli.report import collect, load_run, parse_formats
from hcli.report.figures import CONFUSION_SIZE, CURVES_SIZE, DPI, PER_CLASS_SIZE, samples_size
from hcli.report.tables import Stat
from hcli.runs import Run, create_run
from hcli.spec import load_spec
from jobs.progress import append_line
from jobs.results import write_results

SUBMIT = "2026-11-24T10:00:00+00:00"


def _per_class(clean: float, stain: float) -> dict[str, float | None]:
    out: dict[str, float | None] = dict.fromkeys(CLASS_NAMES)
    out["Clean"], out["Staining"] = clean, stain
    return out


def _later(iso: str, hours: float) -> str:
    return (datetime.fromisoformat(iso) + timedelta(hours=hours)).isoformat(timespec="seconds")


def write_state(run: Run, state: State) -> None:
    atomic_write_json(run.state_path, dump(state))


def write_metrics(run: Run, metrics: list[dict[str, Any]]) -> None:
    for m in metrics:
        line = parse_metrics_line(m)
        assert line is not None, m
        append_line(run.path, line)


def make_run(
    root: Path,
    run_id: str,
    *,
    backbone: str = "convnext",
    seed: int = 0,
    fold: int = 0,
    protocol: str = "kfold",
    lr: float = 1e-4,
    state: str = "COMPLETED",
    miou: float | None = None,
    held_out: str | None = None,
    metrics: list[dict[str, Any]] | None = None,
    requeues: list[dict[str, Any]] | None = None,
    node_hours: float | None = 0.5,
    confusion: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A run folder as the job leaves it, written through the job's writers; `miou=None` means
    no results.json. A finished run ran once for `node_hours` hours on one node; a run without
    results has a state.json from before executions were recorded (no starts)."""
    flags = {"model.backbone": backbone, "seed": seed, "data.fold": fold,
             "data.protocol": protocol, "train.lr": lr, "train.steps": 400,
             "train.warmup_steps": 10, **(extra or {})}
    spec = load_spec(flags=flags)
    run = create_run(root, run_id, spec, snapshot=False)
    job = JobRecord(job_id="1", submitted_at=SUBMIT, executor="slurm", attempt=1)
    if miou is not None and node_hours is not None:
        job.starts, job.ends = [SUBMIT], [_later(SUBMIT, node_hours)]
        job.hardware = [Hardware(host="node1")]
    write_state(run, State(
        run_id=run_id, kind="multiclass", backbone=backbone, name=spec.name, state=state,
        restarts=len(requeues or []), executor="slurm", jobs=[job],
        requeues=[Requeue.model_validate(r) for r in requeues or []],
        created_at=SUBMIT, updated_at=SUBMIT,
    ))
    if metrics is not None:
        write_metrics(run, metrics)
    if miou is not None:
        res = MulticlassResults(
            run_id=run_id, kind="multiclass", backbone=backbone, checkpoint="best", step=400,
            final_step=400, split="test", protocol=protocol, fold=fold, held_out=held_out,
            miou=miou, binary_miou=miou + 0.3, coarse_miou=miou + 0.1, rare_miou=miou / 2,
            per_class_iou=_per_class(0.9 + miou / 10, miou), rare_classes=["Hair", "Dust"],
            val=ValSummary(best_miou=miou + 0.01, best_step=350, last_miou=miou),
            class_names=list(CLASS_NAMES),
            # rows sum to 23: normalised by collect
            confusion=(np.eye(len(CLASS_NAMES)) * 8 + 1).tolist() if confusion else None,
        )
        write_results(run, dump(res), device="cpu", world_size=1)
    return run.path


def _t(minutes: int) -> str:
    return f"2026-11-24T{10 + minutes // 60:02d}:{minutes % 60:02d}:00+00:00"


def build_study(root: Path) -> dict[str, Path]:
    runs = {
        # convnext, kfold: mIoU 0.40, 0.44 (folds 0, 1, seed 0) and 0.42 (fold 0, seed 1).
        "c00": make_run(root, "multiclass-convnext-c00", fold=0, seed=0, miou=0.40,
                        confusion=True, extra={"name": "a", "data.num_workers": 0}),
        "c10": make_run(root, "multiclass-convnext-c10", fold=1, seed=0, miou=0.44,
                        confusion=True, extra={"name": "b", "slurm.partition": "gpu"}),
        "c01": make_run(root, "multiclass-convnext-c01", fold=0, seed=1, miou=0.42),
        # The lr ablation: one run at 3e-4.
        "clr": make_run(root, "multiclass-convnext-clr", lr=3e-4, miou=0.30),
        # swin: one complete run, one in progress (step 200 logged twice after a resume).
        "s00": make_run(root, "multiclass-swin-s00", backbone="swin", miou=0.50),
        "s10": make_run(
            root, "multiclass-swin-s10", backbone="swin", fold=1, state="RUNNING",
            metrics=[
                {"step": 10, "time": _t(0), "split": "train", "loss": 2.0},
                {"step": 100, "time": _t(10), "split": "val", "miou": 0.30,
                 "per_class_iou": _per_class(0.8, 0.1)},
                {"step": 150, "time": _t(30), "split": "train", "loss": 1.5},
                {"step": 150, "time": _t(30), "event": "requeued"},
                {"step": 100, "time": _t(60), "event": "resumed"},
                {"step": 200, "time": _t(70), "split": "val", "miou": 0.36},
                {"step": 200, "time": _t(75), "split": "val", "miou": 0.38,
                 "per_class_iou": _per_class(0.85, 0.2)},
            ],
            requeues=[{"at": _t(30), "step": 150, "reason": "USR2"},
                      {"at": _t(50), "step": 120, "reason": "USR2"}],
            extra={"slurm.nodes": 2},
        ),
        # maxvit failed after one validation: listed, never aggregated.
        "mfail": make_run(
            root, "multiclass-maxvit-mfail", backbone="maxvit", state="FAILED",
            metrics=[{"step": 50, "time": _t(0), "split": "val", "miou": 0.05}],
        ),
        # convnext, leave-one-material-out: Paper (named) and fold 1 (no name).
        "l0": make_run(root, "multiclass-convnext-l0", protocol="lomo", fold=0, miou=0.30,
                       held_out="Paper"),
        "l1": make_run(root, "multiclass-convnext-l1", protocol="lomo", fold=1, miou=0.20),
    }
    samples = runs["c00"] / "figures" / "samples"
    samples.mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 180, 150)).save(samples / "s1_image.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 10:30] = 10
    mask[0:4] = 255
    Image.fromarray(mask, mode="L").save(samples / "s1_truth.png")
    Image.fromarray(np.where(mask == 10, 1, mask).astype(np.uint8), mode="L").save(
        samples / "s1_pred.png")
    return runs


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("study")
    root = base / "runs"
    runs = build_study(root)
    before = _checksums(root)
    paths = sorted(runs.values())
    first = collect(paths, base / "report1", {"md", "csv", "latex", "json"}, None)
    second = collect(list(reversed(paths)), base / "report2", {"md", "csv", "latex", "json"},
                     None)
    return {"root": root, "runs": runs, "before": before, "first": first, "second": second,
            "base": base}


def _table(result: Any, name: str) -> Any:
    return {t.name: t for t in result.tables}[name]


def _row(table: Any, **match: Any) -> dict[str, Any]:
    rows = [r for r in table.rows if all(r.get(k) == v for k, v in match.items())]
    assert len(rows) == 1, (match, table.rows)
    return rows[0]


def test_run_folders_unchanged(study: dict[str, Any]) -> None:
    assert _checksums(study["root"]) == study["before"]


def test_two_collects_write_identical_files(study: dict[str, Any]) -> None:
    a, b = study["base"] / "report1", study["base"] / "report2"
    files_a = _checksums(a)
    assert files_a == _checksums(b)
    assert "report.md" in files_a and "report.json" in files_a
    wanted = {"tables/comparison.csv", "tables/comparison.tex", "tables/comparison.md"}
    assert wanted <= set(files_a)
    assert str(a) not in (a / "report.md").read_text()


def test_in_progress_run_uses_last_val_and_is_marked(study: dict[str, Any]) -> None:
    rec = load_run(study["runs"]["s10"])
    assert rec.in_progress and rec.source == "val"
    assert rec.miou == pytest.approx(0.38)  # the later of the two step-200 lines
    assert rec.best_val_miou == pytest.approx(0.38) and rec.best_val_step == 200
    assert rec.per_class_iou["Staining"] == pytest.approx(0.2)
    assert rec.requeue_steps == [120, 150]
    assert rec.restarts == 2
    # Spans cut at the requeue: 10:00-10:30 and 11:00-11:15 → 0.75 h on 2 nodes.
    assert rec.node_hours == pytest.approx(1.5)
    assert rec.node_hours_source == "timestamps"
    runs = _table(study["first"], "runs")
    assert _row(runs, run_id="multiclass-swin-s10")["state"] == "RUNNING (in progress)"


def test_failed_run_listed_not_aggregated(study: dict[str, Any]) -> None:
    res = study["first"]
    assert _row(_table(res, "runs"), run_id="multiclass-maxvit-mfail")["state"] == "FAILED"
    comp = _table(res, "comparison")
    assert all(r["model.backbone"] != "maxvit" for r in comp.rows)
    assert any("mfail" in w and "left out" in w for w in res.warnings)


def test_comparison_mean_std_over_folds_and_seeds(study: dict[str, Any]) -> None:
    comp = _table(study["first"], "comparison")
    # Groups differ in lr and protocol as well as backbone: both become columns.
    conv = _row(comp, **{"model.backbone": "convnext", "train.lr": "0.0001",
                         "data.protocol": "kfold"})
    assert (conv["runs"], conv["folds"], conv["seeds"]) == (3, 2, 2)
    st = conv["miou"]
    assert st.mean == pytest.approx(0.42) and st.std == pytest.approx(0.02) and st.n == 3
    # Ignored fields (name, data.num_workers, slurm.partition) did not split the group.
    assert conv["node_hours"] == pytest.approx(1.5)
    swin = _row(comp, **{"model.backbone": "swin"})
    assert swin["miou"].mean == pytest.approx(0.44)
    assert swin["miou"].std == pytest.approx(math.sqrt(2 * 0.06**2))
    assert swin["partial"] == 1
    lr3 = _row(comp, **{"model.backbone": "convnext", "train.lr": "0.0003"})
    assert lr3["miou"] == Stat(0.30, None, 1)


def test_markdown_shows_pm_only_for_several_values(study: dict[str, Any]) -> None:
    text = (study["base"] / "report1" / "tables" / "comparison.md").read_text()
    assert "42.0 ± 2.0" in text
    lr3_line = next(line for line in text.splitlines() if "0.0003" in line)
    assert "30.0" in lr3_line and "±" not in lr3_line


def test_csv_and_json_hold_raw_fractions(study: dict[str, Any]) -> None:
    base = study["base"] / "report1"
    import csv

    rows = list(csv.DictReader((base / "tables" / "comparison.csv").open()))
    conv = next(r for r in rows if r["model.backbone"] == "convnext" and r["train.lr"] == "0.0001"
                and r["data.protocol"] == "kfold")
    assert float(conv["miou"]) == pytest.approx(0.42)
    assert float(conv["miou_std"]) == pytest.approx(0.02)
    doc = json.loads((base / "report.json").read_text())
    comp = next(t for t in doc["tables"] if t["name"] == "comparison")
    means = sorted(r["miou"]["mean"] for r in comp["rows"])
    assert means == pytest.approx(sorted([0.42, 0.44, 0.30, 0.25]))
    tex = (base / "tables" / "comparison.tex").read_text()
    assert "\\toprule" in tex and "$\\pm$" in tex and "model.backbone" in tex


def test_ablation_grouped_by_differing_field(study: dict[str, Any]) -> None:
    tables = {t.title: t for t in study["first"].tables if t.name.startswith("ablation_")}
    assert set(tables) == {"train.lr", "data.protocol"}
    lr = tables["train.lr"]
    assert [r["train.lr"] for r in lr.rows] == ["0.0001", "0.0003"]
    assert lr.rows[0]["miou"].mean == pytest.approx(0.42) and lr.rows[0]["runs"] == 3
    assert lr.rows[1]["miou"].mean == pytest.approx(0.30)
    # The backbone alone is the comparison table, not an ablation; swin vs convnext@3e-4 differs
    # in two fields but only with a third group in between, so it is not one either.


def test_per_class_matrix_and_rare_marks(study: dict[str, Any]) -> None:
    res = study["first"]
    groups = _table(res, "per_class_groups")
    labels = {c.key: c.label for c in groups.columns}
    assert labels["Hair"] == "Hair†" and labels["Dust"] == "Dust†" and labels["Clean"] == "Clean"
    conv = next(r for r in groups.rows if r["label"].startswith("convnext")
                and "lr=0.0001" in r["label"] and "kfold" in r["label"])
    assert conv["Staining"].mean == pytest.approx(0.42)
    assert conv["Hair"] is None  # absent everywhere: no number
    by_run = _table(res, "per_class_runs")
    assert _row(by_run, run_id="multiclass-swin-s10 *")["Staining"] == pytest.approx(0.2)
    assert all("mfail" not in r["run_id"] for r in by_run.rows)


def test_domain_table_gap(study: dict[str, Any]) -> None:
    dom = _table(study["first"], "domain")
    paper = _row(dom, held_out="Paper")
    assert paper["miou"].mean == pytest.approx(0.30)
    assert paper["in_domain"].mean == pytest.approx(0.42)
    assert paper["gap"] == pytest.approx(-0.12)
    fold1 = _row(dom, held_out="fold 1")
    assert fold1["gap"] == pytest.approx(-0.22)
    allrow = _row(dom, held_out="(all held out)")
    assert allrow["miou"].mean == pytest.approx(0.25)
    assert allrow["miou"].std == pytest.approx(math.sqrt(2 * 0.05**2))
    assert len(dom.rows) == 3  # swin and convnext@3e-4 have no held-out runs


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_figures_valid_with_expected_sizes(study: dict[str, Any]) -> None:
    figs = study["base"] / "report1" / "figures"

    def px(size: tuple[float, float]) -> tuple[int, int]:
        return (round(size[0] * DPI), round(size[1] * DPI))

    assert _png_size(figs / "per_class_iou.png") == px(PER_CLASS_SIZE)
    confusions = sorted(figs.glob("confusion_*.png"))
    assert len(confusions) == 1  # only the convnext kfold group has confusion matrices
    assert _png_size(confusions[0]) == px(CONFUSION_SIZE)
    assert _png_size(figs / "curves_multiclass-swin-s10.png") == px(CURVES_SIZE)
    assert _png_size(figs / "samples_multiclass-convnext-c00.png") == samples_size(1)
    for png in figs.glob("*.png"):
        pdf = png.with_suffix(".pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-", pdf
    report = (study["base"] / "report1" / "report.md").read_text()
    assert "![Per-class IoU](figures/per_class_iou.png)" in report
    assert "figures/samples_multiclass-convnext-c00.png" in report


def test_qualitative_grid_uses_artefact_colours(study: dict[str, Any]) -> None:
    img = np.asarray(Image.open(study["base"] / "report1" / "figures" /
                                "samples_multiclass-convnext-c00.png").convert("RGB"))
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (0x63, 0xFF, 0xAC) in colours  # Staining (id 10) in the ground truth
    assert (0x1C, 0xE6, 0xFF) in colours  # Material loss (id 1) in the prediction
    assert (0x5A, 0x00, 0x07) in colours  # 255 → Background colour


def test_palette_masks_keep_their_ids() -> None:
    from hcli.report.figures import _colour_mask

    ids = np.array([[0, 10], [255, 3]], np.uint8)
    p = Image.fromarray(ids, mode="L").convert("P")  # P image whose indices are the class ids
    p.putpalette([7] * 768)  # a palette unrelated to ARTeFACT's must not matter
    p.putdata(ids.reshape(-1).tolist())
    rgb = _colour_mask(p)
    assert rgb[0, 1].tolist() == [0x63, 0xFF, 0xAC]  # Staining
    assert rgb[1, 0].tolist() == [0x5A, 0x00, 0x07]  # Background
    assert rgb[1, 1].tolist() == [0xFF, 0x4A, 0x46]  # Dust


def test_confusion_is_row_normalised() -> None:
    from hcli.report.figures import mean_confusion
    from hcli.report.load import RunRecord

    def rec(conf: list[list[float]]) -> RunRecord:
        return RunRecord(path=Path("."), run_id="r", kind="multiclass", backbone="x",
                         state="COMPLETED", spec={}, flat={}, confusion=conf)

    n = len(CLASS_NAMES)
    a = np.zeros((n, n))
    a[0, 0], a[0, 1] = 3, 1
    b = np.zeros((n, n))
    b[0, 0] = 1
    mean = mean_confusion([rec(a.tolist()), rec(b.tolist()), rec(None)])  # type: ignore[arg-type]
    assert mean is not None
    m, n_runs = mean
    assert n_runs == 2
    assert m[0, 0] == pytest.approx((0.75 + 1.0) / 2) and m[0, 1] == pytest.approx(0.125)
    assert np.isnan(m[1]).all()  # a class that never occurs: no row


def test_node_hours_split_at_job_submissions(tmp_path: Path) -> None:
    lines = [{"step": s, "time": _t(m), "split": "train", "loss": 1.0}
             for s, m in ((10, 5), (20, 20), (30, 70), (40, 100))]
    folder = make_run(tmp_path, "multiclass-convnext-j", metrics=lines,
                      extra={"slurm.nodes": 2})
    run = Run(folder)
    state = State.model_validate(run.state())
    state.executor = "local"  # one machine, whatever slurm.nodes says
    state.jobs = [JobRecord(job_id="local-1", submitted_at=_t(0)),
                  JobRecord(job_id="local-2", submitted_at=_t(60))]
    write_state(run, state)
    rec = load_run(folder)
    assert rec.node_hours == pytest.approx((15 + 30) / 60)  # the 40 idle minutes do not count
    assert rec.node_hours_source == "timestamps"
    assert rec.source is None and rec.step == 40


def _requeued_by_the_job(root: Path) -> Run:
    """A run the job's own bookkeeping (jobs.runtime) took through a requeue at step 150: two
    executions of SLURM job 7 on 2 nodes, 30 and 15 minutes, then results."""
    from jobs.runtime import JobContext, _mark_running, _update

    spec = load_spec(flags={"train.steps": 200, "train.warmup_steps": 1, "slurm.nodes": 2})
    run = create_run(root, "multiclass-convnext-rq", spec, snapshot=False)
    run.add_job("7", "slurm")
    ctx = JobContext(run=run, spec=spec, job_id="7", stop=None)
    _mark_running(ctx, Hardware(host="n1", nodes=2, world_size=2))
    write_metrics(run, [{"step": 100, "time": _t(10), "split": "val", "miou": 0.3},
                        {"step": 150, "time": _t(30), "event": "stopped", "reason": "SIGUSR2"}])
    requeue = Requeue(at=_t(30), step=150, reason="SIGUSR2", job_id="7")
    _update(run, ended=True, state="REQUEUED", requeues=[dump(requeue)])
    _mark_running(ctx, Hardware(host="n2", nodes=2, world_size=2))
    write_metrics(run, [{"step": 100, "time": _t(41), "event": "resumed",
                         "checkpoint": "step-000100.pt"},
                        {"step": 200, "time": _t(55), "split": "val", "miou": 0.4}])
    # The executions' times as they would be on a real cluster (the test runs in a moment).
    state = State.model_validate(run.state())
    state.jobs[0].starts, state.jobs[0].ends = [_t(0), _t(40)], [_t(30)]
    write_state(run, state)
    return run


def test_requeued_run_counts_both_executions_and_marks_the_curve(tmp_path: Path) -> None:
    run = _requeued_by_the_job(tmp_path / "runs")
    rec = load_run(run.path)  # in progress: compute from state.json, up to the heartbeat
    assert rec.requeue_steps == [150] and rec.restarts == 1
    events = [parse_metrics_line(json.loads(x)) for x in
              (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [getattr(e, "event", None) for e in events].count("requeued") == 1
    atomic_write_json(run.path / "progress.json",
                      dump(Progress(step=200, total_steps=200, heartbeat=_t(55))))
    rec = load_run(run.path)
    assert rec.node_hours_source == "state"
    assert rec.node_hours == pytest.approx(2 * (30 + 15) / 60)

    state = State.model_validate(run.state())
    state.jobs[0].ends = [_t(30), _t(60)]  # the second execution ended at 11:00
    write_state(run, state)
    res = MulticlassResults(run_id=run.run_id, kind="multiclass", backbone="convnext",
                            miou=0.41, val=ValSummary(best_miou=0.4, best_step=200,
                                                      last_miou=0.4))
    written = write_results(run, dump(res), device="cpu", world_size=2)
    assert [a["wall_s"] for a in written["compute"]["attempts"]] == [1800.0, 1200.0]
    rec = load_run(run.path)
    assert rec.node_hours_source == "results"
    assert rec.node_hours == pytest.approx(2 * (30 + 20) / 60, abs=1e-4)  # rounded to 4 places
    assert rec.last_val_miou == pytest.approx(0.4) and rec.requeue_steps == [150]
    assert rec.wall_s == 3000.0 and rec.gpu_hours == 0.0  # CPU run: no GPU-hours
    out = collect([run.path], tmp_path / "rep", {"md"}, None)
    assert _row(_table(out, "runs"), run_id=run.run_id)["node_hours"] == pytest.approx(
        50 / 60 * 2, abs=1e-4)
    assert (tmp_path / "rep" / "figures" / f"curves_{run.run_id}.png").is_file()


def test_results_of_an_older_job_still_read(tmp_path: Path) -> None:
    """results.json from before compute counted every execution: no node_hours, no
    val.last_miou; collect falls back to state.json and the validation lines."""
    folder = make_run(tmp_path, "multiclass-convnext-old", miou=0.4, node_hours=None,
                      metrics=[{"step": 100, "time": _t(0), "split": "val", "miou": 0.35}])
    raw = json.loads((folder / "results.json").read_text())
    del raw["val"]["last_miou"]
    raw["compute"] = {"wall_s": 812.0, "restarts": 0, "device": "cpu", "world_size": 1}
    MulticlassResults.model_validate(raw)  # the older shape is still the contract
    (folder / "results.json").write_text(json.dumps(raw))
    rec = load_run(folder)
    assert rec.source == "test" and rec.miou == pytest.approx(0.4) and not rec.warnings
    assert rec.last_val_miou == pytest.approx(0.35) and rec.node_hours is None


def test_missing_files_tolerated(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "multiclass-swin-bare"
    folder.mkdir(parents=True)
    atomic_write_json(folder / "state.json",
                      dump(State(state="PENDING", kind="multiclass", backbone="swin")))
    rec = load_run(folder)
    assert rec.source is None and rec.miou is None and rec.backbone == "swin"
    assert any("spec.yaml" in w for w in rec.warnings)
    res = collect([folder], tmp_path / "out", {"md"}, None)
    assert "PENDING" in (tmp_path / "out" / "report.md").read_text()
    assert res.tables[0].rows[0]["state"] == "PENDING"


def test_bad_inputs_raise_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="docx"):
        parse_formats("md,docx")
    assert parse_formats("md, tex") == {"md", "latex"}
    with pytest.raises(UserError, match="no runs"):
        collect([], tmp_path / "out", {"md"}, None)
    run = make_run(tmp_path / "runs", "multiclass-convnext-x", miou=0.4)
    with pytest.raises(UserError, match="inside the run folder"):
        collect([run], run / "report", {"md"}, None)
    with pytest.raises(UserError, match="--group-by"):
        collect([run], tmp_path / "out", {"md"}, "train.nonsense")


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    from hcli.cli import main

    root = tmp_path / "runs"
    make_run(root, "multiclass-convnext-a", fold=0, miou=0.40)
    make_run(root, "multiclass-convnext-b", fold=1, miou=0.50)
    make_run(root, "multiclass-swin-c", backbone="swin", miou=0.30)
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as exc:
        main(["collect", "--runs-dir", str(root), "--out", str(out), "--format", "md,csv",
              "--json"])
    assert exc.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"] == str(out / "report.md")
    assert [r["run_id"] for r in doc["runs"]] == ["multiclass-convnext-a",
                                                  "multiclass-convnext-b", "multiclass-swin-c"]
    conv = next(r for r in doc["tables"]["comparison"]["rows"]
                if r["model.backbone"] == "convnext")
    assert conv["miou"] == {"mean": 0.45, "std": pytest.approx(math.sqrt(0.005), abs=1e-6),
                           "n": 2}
    assert (out / "tables" / "runs.csv").is_file() and not (out / "tables" / "runs.tex").exists()

    # A glob under the runs root, human output.
    with pytest.raises(SystemExit) as exc:
        main(["collect", "multiclass-swin-*", "--runs-dir", str(root), "--out",
              str(tmp_path / "rep2"), "--format", "md"])
    assert exc.value.code in (0, None)
    assert "report.md" in capsys.readouterr().out
    assert "multiclass-convnext-a" not in (tmp_path / "rep2" / "report.md").read_text()

    # Default output folder: reports/<timestamp>/ under the cwd.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["collect", "multiclass-convnext-a", "--runs-dir", str(root), "--format", "json"])
    assert exc.value.code in (0, None)
    capsys.readouterr()
    made = list((tmp_path / "reports").glob("*/report.json"))
    assert len(made) == 1 and (made[0].parent / "report.md").is_file()

    for argv, needle in ((["--format", "xls"], "xls"), (["nothing-*"], "matches no run")):
        with pytest.raises(SystemExit) as exc:
            main(["collect", "--runs-dir", str(root), "--out", str(tmp_path / "x"), *argv])
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err


def test_figures_follow_the_runs_selected(tmp_path: Path) -> None:
    # Figures are drawn for the groups and runs the tables show, and no others: collecting one
    # backbone's runs out of a runs root with two draws nothing of the other.
    from hcli.cli.collect import run_collect

    root = tmp_path / "runs"
    curve = [{"step": 10, "time": _t(0), "split": "train", "loss": 2.0},
             {"step": 20, "time": _t(1), "split": "val", "miou": 0.3}]
    for backbone in ("convnext", "swin"):
        for fold in (0, 1):
            make_run(root, f"multiclass-{backbone}-f{fold}", backbone=backbone, fold=fold,
                     miou=0.4, confusion=True, metrics=curve)
    result = run_collect(["multiclass-swin-*"], out=tmp_path / "rep", formats="json",
                         runs_dir=root)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    shown_groups = {r["model.backbone"] for r in _table(result, "comparison").rows}
    assert shown_groups == {"swin"}
    figures = sorted(Path(f).name for f in doc["figures"] if f.endswith(".png"))
    assert figures == ["confusion_swin.png", "curves_multiclass-swin-f0.png",
                       "curves_multiclass-swin-f1.png", "per_class_iou.png"]
    assert sorted(p.name for p in (tmp_path / "rep" / "figures").glob("*.png")) == figures
    assert len(result.runs) == 2
