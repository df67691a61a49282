"""Study files, `hcli plan` and `hcli submit pipeline` (hcli.study, docs/planning.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _write(tmp_path: Path, study: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _tiny(data: Path, **extra: object) -> dict:
    base = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in TINY)}
    return {**base, "data.root": str(data), **extra}


# -- validation: one line, exit 2 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("stages", "says"),
    [
        ({"a": {"kind": "multiclass", "needs": ["b"]}, "b": {"kind": "multiclass", "needs": ["a"]}},
         "cycle (a -> b -> a"),
        ({"a": {"kind": "multiclass", "needs": ["nope"]}}, "stages.a.needs: unknown stage 'nope'"),
        ({"a": {"kind": "adapt", "from": "b"}, "b": {"kind": "meta"}},
         "stages.a.from: 'b' is not a stage defined before 'a'"),
        ({"a": {"kind": "multiclass", "init_from": "a"}}, "stages.a.init_from: 'a' is not a stage"),
        ({"a": {"kind": "meta"}, "b": {"kind": "adapt"}}, "an adapt stage needs `from: <stage>`"),
        ({"a": {"kind": "mulitclass"}}, "stages.a.kind: unknown kind 'mulitclass'"),
        ({"a": {"kind": "multiclass", "sweep": {"seed": []}}}, "stages.a.sweep: Value error"),
        ({"a": {"kind": "multiclass", "backbone": "swin"}}, "stages.a.backbone: Extra inputs"),
    ],
)
def test_bad_study_files_are_one_line_errors(tmp_path: Path, stages: dict, says: str):
    path = _write(tmp_path, {"study": "s", "stages": stages})
    done = run_cli(["plan", str(path), "--runs-dir", str(tmp_path / "runs")], check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert says.replace("Value error", "") in lines[0].replace("Value error, ", ""), lines[0]


def test_stage_order_keeps_file_order_where_needs_allow(tmp_path: Path):
    from hcli.study import load_study

    study, _ = load_study(_write(tmp_path, {"study": "s", "stages": {
        "late": {"kind": "multiclass", "needs": ["early"]},
        "early": {"kind": "mae"},
        "other": {"kind": "multiclass"},
    }}))
    assert study.order() == ["early", "late", "other"]
    assert study.dependants("early") == ["late"]


# -- the DAG a dry run shows -------------------------------------------------------------------


def _chain_study(data: Path, **middle: object) -> dict:
    tiny = _tiny(data)
    return {"study": "chain", "defaults": tiny, "stages": {
        "pre": {"kind": "mae", "overrides": {"mae.patch_size": 16}},
        "fine": {"kind": "multiclass", "init_from": "pre", **middle},
        "lomo": {"kind": "multiclass", "overrides": {"data.protocol": "lomo"},
                 "sweep": {"data.fold": [0, 1]}},
        "adapt": {"kind": "adapt", "from": "lomo", "sweep": {"adapt.shots": [0, 2]}},
    }}


def test_dry_run_prints_the_dag_and_the_run_ids(synth_data: Path, tmp_path: Path):
    path = _write(tmp_path, _chain_study(synth_data))
    runs = tmp_path / "runs"
    out = json.loads(run_cli(["submit", "pipeline", str(path), "--dry-run", "--json",
                              "--runs-dir", str(runs)]).stdout)
    stages = {s["stage"]: s for s in out["stages"]}
    assert [s["stage"] for s in out["stages"]] == ["pre", "fine", "lomo", "adapt"]
    assert stages["fine"]["needs"] == ["pre"] and stages["adapt"]["needs"] == ["lomo"]
    assert stages["fine"]["dependency"] == "afterok:<jobs of pre>"
    assert stages["pre"]["dependency"] is None
    assert len(stages["lomo"]["runs"]) == 2 and len(stages["adapt"]["runs"]) == 4
    assert all(r.startswith("adapt-") for r in stages["adapt"]["runs"])
    assert not runs.exists() or not any(runs.iterdir()), "a dry run wrote something"
    # The fine-tuning run names the pretraining run it starts from, by id.
    from hcli.study import expand_study, load_study

    study, _ = load_study(path)
    planned = expand_study(study)
    (fine,) = planned["fine"]
    assert fine.spec.model.init_from == stages["pre"]["runs"][0]
    sources = {p.spec.adapt.source_run for p in planned["adapt"]}
    assert sources == set(stages["lomo"]["runs"])


def test_init_from_needs_exactly_one_matching_run(synth_data: Path, tmp_path: Path):
    study = _chain_study(synth_data)
    study["stages"]["pre"]["sweep"] = {"seed": [0, 1]}  # two MAE runs agree on the match keys
    path = _write(tmp_path, study)
    done = run_cli(["submit", "pipeline", str(path), "--dry-run", "--runs-dir",
                    str(tmp_path / "runs")], check=False)
    assert done.returncode == 2
    assert "stages.fine.init_from=pre: 2 runs of that stage have" in done.stderr


# -- plan arithmetic on a hand-computed case ---------------------------------------------------


def _calibrate(root: Path, **entry: float) -> None:
    from hcli.calibration import Calibration, CalibrationEntry, Hardware, save_calibration

    hw = Hardware(key="cpu-test-2c", gpu_name=None, gpu_count=0, cpu="test", cores=2,
                  torch="x", host="h")
    common = {"backbone": "convnext", "encoder_kwargs": yaml.safe_load(TINY[1].split("=", 1)[1]),
              "crop": 64, "amp": "none", "steps_measured": 10, "measured_at": "now",
              "peak_mem_mb": 1.0}
    save_calibration(root, Calibration(hardware=hw, entries=[
        CalibrationEntry(kind="multiclass", batch_size=4, step_s=4 / entry["train_sps"],
                         samples_per_s=entry["train_sps"], startup_s=entry["startup"], **common),
        CalibrationEntry(kind="infer", batch_size=1, step_s=entry["infer_s"],
                         samples_per_s=1 / entry["infer_s"], startup_s=entry["startup"],
                         **common),
    ]))


def test_plan_arithmetic_matches_a_hand_computed_case(synth_data: Path, tmp_path: Path):
    from hcli.data.manifest import load_manifest
    from hcli.data.splits import get_fold
    from hcli.spec import load_spec
    from hcli.study import expand_study, load_study
    from hcli.study.plan import plan_study

    runs = tmp_path / "runs"
    _calibrate(runs, train_sps=10.0, startup=5.0, infer_s=0.5)
    tiny = _tiny(synth_data, **{"train.steps": 100, "train.val_every_steps": 50,
                                "train.batch_size": 2, "slurm.signal_delay_s": 10})
    path = _write(tmp_path, {"study": "hand", "defaults": tiny, "stages": {
        "a": {"kind": "multiclass", "sweep": {"seed": [0, 1, 2]}},
        "b": {"kind": "multiclass", "needs": ["a"], "overrides": {"data.fold": 1}},
    }})
    study, _ = load_study(path)
    plan = plan_study(study, expand_study(study), runs, gpus=2, time_limit_s=40.0)

    manifest = load_manifest(synth_data)
    spec = load_spec(kind="multiclass", overrides=[f"{k}={v}" for k, v in tiny.items()])
    fold = get_fold(manifest, spec.data, 0)
    # 100 steps × 2 samples at 10 samples/s; 2 validations of the val images and one test pass
    # at 0.5 s per image; a 5-s start.
    work = 100 * 2 / 10 + (2 * len(fold.val) + len(fold.test)) * 0.5
    usable = 40 - 10 - 5  # time limit - stop signal - startup
    a = plan.stages[0]
    assert [r.train_s for r in a.runs] == [20.0] * 3
    assert a.runs[0].eval_s == pytest.approx(work - 20.0)
    executions = -(-work // usable)
    assert executions >= 2 and a.runs[0].executions == executions  # the case includes requeues
    run_s = work + 5 * executions
    assert a.device_hours == pytest.approx(3 * run_s / 3600)
    # Three runs on two devices: two at once, the third after; stage b after all of a.
    assert sorted(r.start_s for r in a.runs) == pytest.approx([0.0, 0.0, run_s])
    assert plan.stages[1].start_s == pytest.approx(2 * run_s)
    assert plan.critical_path == ["a", "b"] and plan.critical_s == pytest.approx(
        run_s + plan.stages[1].runs[0].total_s)

    # One local chain: one device, one process start for the whole study.
    chained = plan_study(study, expand_study(study), runs, gpus=2, chain=True)
    runs_in_order = [r for s in chained.stages for r in s.runs]
    assert [r.startup_s for r in runs_in_order] == [5.0] + [0.0] * (len(runs_in_order) - 1)
    assert chained.gpus == 1
    assert chained.wall_s == pytest.approx(sum(r.total_s for r in runs_in_order))


def test_plan_without_a_calibration_says_what_to_measure(synth_data: Path, tmp_path: Path):
    path = _write(tmp_path, {"study": "none", "defaults": _tiny(synth_data),
                             "stages": {"a": {"kind": "multiclass"}}})
    runs = tmp_path / "runs"
    done = run_cli(["plan", str(path), "--runs-dir", str(runs)], check=False)
    assert done.returncode == 2
    assert "no calibration for kind=multiclass backbone=convnext crop=64" in done.stderr
    assert "hcli bench" in done.stderr and "--throughput" in done.stderr
    shown = run_cli(["plan", str(path), "--runs-dir", str(runs), "--throughput", "8",
                     "--figure", str(tmp_path / "plan.png")])
    assert "assumed: multiclass convnext: --throughput 8 samples/s" in " ".join(
        shown.stdout.split())
    assert (tmp_path / "plan.png").stat().st_size > 0


# -- submission: local chain with a failing middle stage, then the fix --------------------------


def _three_stages(data: Path, weights: Path) -> dict:
    return {"study": "three", "defaults": _tiny(data), "stages": {
        "first": {"kind": "multiclass"},
        "middle": {"kind": "multiclass", "needs": ["first"],
                   "overrides": {"model.init_from": str(weights)}},
        "last": {"kind": "multiclass", "needs": ["middle"], "overrides": {"seed": 1}},
    }}


def _states(runs: Path, out: dict) -> dict[str, str]:
    return {
        s["stage"]: json.loads((runs / s["runs"][0] / "state.json").read_text())["state"]
        for s in out["stages"]
    }


def _submit(path: Path, runs: Path, *mode: str) -> dict:
    return json.loads(run_cli(["submit", "pipeline", str(path), *mode, "--json",
                               "--runs-dir", str(runs)]).stdout)


def test_local_pipeline_blocks_after_a_failure_and_resubmits_only_what_is_missing(
    synth_data: Path, tmp_path: Path
):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a checkpoint")  # passes the submit-time check, fails the job
    path = _write(tmp_path, _three_stages(synth_data, weights))
    runs = tmp_path / "runs"
    out = _submit(path, runs, "--foreground")
    assert _states(runs, out) == {"first": "COMPLETED", "middle": "FAILED", "last": "BLOCKED"}
    last = out["stages"][2]["runs"][0]
    message = json.loads((runs / last / "state.json").read_text())["message"]
    assert message.startswith(f"BLOCKED by {out['stages'][1]['runs'][0]} (FAILED)")
    status = json.loads(run_cli(["status", "--json", "--all", "--runs-dir", str(runs)]).stdout)
    assert {r["run_id"]: r["state"] for r in status}[last] == "BLOCKED"
    grouped = json.loads(run_cli(["status", "--pipeline", "three", "--json", "--runs-dir",
                                  str(runs)]).stdout)
    assert [(s["stage"], s["counts"]) for s in grouped["stages"]] == [
        ("first", {"COMPLETED": 1}), ("middle", {"FAILED": 1}), ("last", {"BLOCKED": 1})]
    table = run_cli(["status", "--pipeline", "three", "--runs-dir", str(runs)]).stdout
    assert "== last (multiclass) after middle: 1 BLOCKED" in table
    assert f"BLOCKED by {out['stages'][1]['runs'][0]}" in table
    unknown = run_cli(["status", "--pipeline", "nope", "--runs-dir", str(runs)], check=False)
    assert unknown.returncode == 2 and "submitted: three" in unknown.stderr

    # The fix: a real checkpoint at the same path (the run ids do not change).
    first = runs / out["stages"][0]["runs"][0]
    weights.write_bytes((first / "checkpoints" / "best.pt").read_bytes())
    again = _submit(path, runs, "--foreground")
    by = {s["stage"]: s for s in again["stages"]}
    assert by["first"]["existing"] == out["stages"][0]["runs"] and not by["first"]["submitted"]
    assert by["middle"]["resumed"] == out["stages"][1]["runs"]
    assert by["last"]["submitted"] == [last]
    assert set(_states(runs, again).values()) == {"COMPLETED"}
    third = _submit(path, runs, "--foreground")
    assert not any(s["submitted"] or s["resumed"] for s in third["stages"])


@pytest.mark.slurm
def test_slurm_pipeline_blocks_then_resubmits_after_the_fix(
    synth_data: Path, tmp_path: Path, slurm_env: dict
):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a checkpoint")
    study = _three_stages(synth_data, weights)
    study["defaults"].update({"slurm.cpus_per_task": 1, "slurm.mem_gb": 2, "slurm.time_min": 5,
                              "slurm.signal_delay_s": 30})
    path = _write(tmp_path, study)
    runs = tmp_path / "runs"
    out = _submit(path, runs, "--cluster")
    by = {s["stage"]: s for s in out["stages"]}
    middle, last = by["middle"]["runs"][0], by["last"]["runs"][0]
    first_job = json.loads((runs / by["first"]["runs"][0] / "state.json").read_text())
    assert by["middle"]["dependency"] == f"afterok:{first_job['jobs'][-1]['job_id']}"
    _wait(runs, {middle: "FAILED", last: "BLOCKED"})
    message = json.loads((runs / last / "state.json").read_text())["message"]
    assert message.startswith(f"BLOCKED by {middle} (FAILED)")

    weights.write_bytes((runs / by["first"]["runs"][0] / "checkpoints" / "best.pt").read_bytes())
    again = {s["stage"]: s for s in _submit(path, runs, "--cluster")["stages"]}
    assert again["first"]["existing"] and not again["first"]["submitted"]
    assert again["middle"]["resumed"] == [middle] and again["last"]["submitted"] == [last]
    _wait(runs, {middle: "COMPLETED", last: "COMPLETED"})
    third = _submit(path, runs, "--cluster")
    assert not any(s["submitted"] or s["resumed"] for s in third["stages"])


def _wait(runs: Path, want: dict[str, str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        seen = {r: json.loads((runs / r / "state.json").read_text())["state"] for r in want}
        if seen == want:
            return
        time.sleep(1.0)
    raise AssertionError(f"runs did not reach {want} in {timeout:.0f} s: {seen}")
