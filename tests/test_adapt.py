"""The adapt kind and `hcli submit adapt`: support drawing, 0-shot identity with the source, a
k-shot run from a real (tiny) leave-one-material-out source, planning and refusals, an adaptation
array on the local SLURM, and collect's adaptation tables read by value from those runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hcli.errors import SpecError
from jobs.adapt.support import draw_support
from tests.conftest import run_cli, tiny_overrides
from tests.slurm_cluster import SlurmCluster, slurm_env, wait_for_state  # noqa: F401

# Paper, fold 4 of lomo on the synthetic data: 19 held-out images.
FOLD = "4"
SHORT = ("train.steps=6", "train.val_every_steps=3", "train.warmup_steps=1")


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _ids(path: Path) -> list[str]:
    return path.read_text().split()


def _adapt(runs: Path, source: str, *overrides: str, mode: str = "--foreground") -> list[dict]:
    args = ["submit", "adapt", "--from", source, mode, "--json", "--runs-dir", str(runs)]
    for o in overrides:
        args += ["-o", o]
    done = run_cli(args)
    # --foreground prints the outcomes, then the runs' own logs on stdout.
    text = done.stdout
    return json.loads(text[: text.rindex("]") + 1] if mode != "--foreground" else
                      text[: _json_end(text)])


def _json_end(text: str) -> int:
    decoder = json.JSONDecoder()
    _, end = decoder.raw_decode(text)
    return end


@pytest.fixture(scope="module")
def lomo(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny multiclass lomo source trained for real, and its 0-shot and 3-shot adaptations."""
    runs = tmp_path_factory.mktemp("adapt") / "runs"
    done = run_cli(["submit", "multiclass", "--foreground", "--json", "--runs-dir", str(runs),
                    *tiny_overrides(synth_data, "data.protocol=lomo", f"data.fold={FOLD}",
                                    *SHORT)])
    source = json.loads(done.stdout[: _json_end(done.stdout)])[0]["run_id"]
    outs = _adapt(runs, source, "adapt.shots=0,3", "adapt.steps=2", "seed=1")
    by_shots = {_json(runs / o["run_id"] / "results.json")["shots"]: runs / o["run_id"]
                for o in outs}
    return {"runs": runs, "source": runs / source, "zero": by_shots[0], "k": by_shots[3]}


def test_support_is_deterministic_by_seed_different_across_seeds_and_nested() -> None:
    ids = [f"img{i:02d}" for i in range(20)]
    assert draw_support(ids, 5, seed=0) == draw_support(list(reversed(ids)), 5, seed=0)
    assert draw_support(ids, 5, seed=0) != draw_support(ids, 5, seed=1)
    assert draw_support(ids, 10, seed=3)[:5] == draw_support(ids, 5, seed=3)
    assert draw_support(ids, 0, seed=0) == []
    with pytest.raises(SpecError, match="adapt.shots=20"):
        draw_support(ids, 20, seed=0)  # nothing would be left to score


def test_zero_shot_trains_nothing_and_equals_the_source_held_out_evaluation(lomo) -> None:
    zero, source = lomo["zero"], lomo["source"]
    res, src = _json(zero / "results.json"), _json(source / "results.json")
    assert res["kind"] == "adapt" and res["shots"] == 0 and res["support_ids"] == []
    assert res["adapt_steps"] == 0 and res["final_step"] == 0
    metrics = zero / "metrics.jsonl"
    assert not metrics.exists() or '"split": "train"' not in metrics.read_text()
    assert not list((zero / "checkpoints").glob("*.pt*"))
    assert res["query_size"] == src["fold_sizes"]["test"]
    for key in ("miou", "binary_miou", "per_class_iou", "confusion"):
        assert res[key] == src[key], key
    assert res["source_run"] == source.name and res["source_kind"] == "multiclass"
    assert res["source_val_miou"] == src["val"]["best_miou"]


def test_k_shot_adaptation_writes_results_and_never_scores_its_support(lomo) -> None:
    run, source = lomo["k"], lomo["source"]
    res = _json(run / "results.json")
    held_out = set(_ids(source / "provenance" / "test.txt"))
    support = set(res["support_ids"])
    scored = set(_ids(run / "provenance" / "test.txt"))
    assert len(support) == 3 and support <= held_out
    assert scored == held_out - support and res["query_size"] == len(scored)
    assert not support & set(res["samples"])  # the saved predictions are of query images
    assert set(_ids(run / "provenance" / "train.txt")) == support
    assert res["adapt_steps"] == 2 and res["final_step"] == 2 and res["params"] == "all"
    assert res["val"]["best_support_miou"] is not None and res["val"]["best_miou"] is None
    assert res["compute"]["wall_s"] is not None
    prov = _json(run / "provenance.json")
    assert prov["init_from"] == [source.name] and prov["samples"]["test"]["count"] == len(scored)
    # The weights moved: the adapted model is not the source's.
    assert res["miou"] != _json(lomo["zero"] / "results.json")["miou"] or \
        res["per_class_iou"] != _json(lomo["zero"] / "results.json")["per_class_iou"]


def test_submit_adapt_plans_sources_x_shots_x_seeds(lomo, synth_data: Path) -> None:
    runs = lomo["runs"]
    other = run_cli(["submit", "multiclass", "--dry-run", "--json", "--runs-dir", str(runs),
                     *tiny_overrides(synth_data, "data.protocol=locontent", "data.fold=0")])
    assert json.loads(other.stdout)["run_id"]  # a second source, created below without training
    from hcli.launch import plan_runs
    from hcli.runs import create_run

    (p,) = plan_runs("multiclass", overrides=[f"data.root={synth_data}",
                                              "data.protocol=locontent", "data.fold=0"])
    if not (runs / p.run_id).exists():
        create_run(runs, p.run_id, p.spec).update_state(state="COMPLETED")
    sources = [lomo["source"].name, p.run_id]
    done = run_cli(["submit", "adapt", "--from", ",".join(sources), "--dry-run", "--json",
                    "--runs-dir", str(runs), "-o", "adapt.shots=0,5", "-o", "seed=0,1"])
    plan_json = json.loads(done.stdout)
    outs = plan_json["runs"]
    assert len(outs) == 8 and len({o["run_id"] for o in outs}) == 8
    (array,) = plan_json["arrays"]  # one array for every source, shot and seed
    assert sorted(array["tasks"].values()) == sorted(o["run_id"] for o in outs)
    plan = sorted((o["spec"]["adapt"]["source_run"], o["spec"]["adapt"]["shots"],
                   o["spec"]["seed"]) for o in outs)
    assert plan == sorted((s, k, seed) for s in sources for k in (0, 5) for seed in (0, 1))
    src_spec = {s: (runs / s / "spec.yaml").read_text() for s in sources}
    for o in outs:
        assert o["spec"]["kind"] == "adapt" and o["run_id"].startswith("adapt-")
        source = o["spec"]["adapt"]["source_run"]
        assert f"fold: {o['spec']['data']['fold']}" in src_spec[source]
        assert f"protocol: {o['spec']['data']['protocol']}" in src_spec[source]


def test_submit_adapt_refuses_a_source_without_a_held_out_domain(lomo, synth_data) -> None:
    runs = lomo["runs"]
    from hcli.launch import plan_runs
    from hcli.runs import create_run

    (p,) = plan_runs("multiclass", overrides=[f"data.root={synth_data}", "data.protocol=kfold"])
    if not (runs / p.run_id).exists():
        create_run(runs, p.run_id, p.spec).update_state(state="COMPLETED")
    done = run_cli(["submit", "adapt", "--from", p.run_id, "--dry-run", "--runs-dir", str(runs)],
                   check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "data.protocol=kfold" in done.stderr and "lomo" in done.stderr
    done = run_cli(["submit", "adapt", "--dry-run", "--runs-dir", str(runs)], check=False)
    assert done.returncode == 2 and "--from" in done.stderr


def _sweep(data: Path, runs: Path) -> list:
    """12 adaptation runs planned from 2 finished (untrained) lomo sources × 3 shots × 2 seeds."""
    from hcli.launch import plan_runs
    from hcli.launch._plan import plan_adapt
    from hcli.runs import create_run

    sources = []
    for fold in ("2", "4"):
        (p,) = plan_runs("multiclass", overrides=[f"data.root={data}", "data.crop_size=64",
                                                  "data.protocol=lomo", f"data.fold={fold}"])
        create_run(runs, p.run_id, p.spec).update_state(state="COMPLETED")
        sources.append(p.run_id)
    planned = plan_adapt(sources, runs, overrides=["adapt.shots=0,1,2", "seed=0,1"])
    assert len(planned) == 12
    return planned


def test_a_sweeps_checks_run_once_per_distinct_input_and_fail_every_run_sharing_it(
    synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcli.errors import DataError
    from hcli.launch import _checks

    runs = tmp_path / "runs"
    planned = _sweep(synth_data, runs)
    calls: list[str] = []
    for name in ("_check_data", "_check_fold"):
        def counted(*a: Any, _real: Any = getattr(_checks, name), _name: str = name,
                    **k: Any) -> Any:
            calls.append(_name)
            return _real(*a, **k)
        monkeypatch.setattr(_checks, name, counted)
    memo: dict = {}
    for p in planned:
        _checks.preflight(p.spec, runs, memo=memo)
    # One manifest; a fold per source and seed (the seed draws its validation split).
    assert sorted(calls) == ["_check_data"] + ["_check_fold"] * 4
    calls.clear()
    for p in planned:  # without a memo, as the job checks on its node: every run checks
        _checks.preflight(p.spec, runs)
    assert sorted(calls) == ["_check_data"] * 12 + ["_check_fold"] * 12

    def missing(spec: Any) -> Any:
        calls.append("missing")
        raise DataError(f"{spec.data.root}/manifest.json is missing")

    monkeypatch.setattr(_checks, "_check_data", missing)
    calls.clear()
    memo = {}
    for p in planned:  # found once, refused for each run that reads the same data
        with pytest.raises(DataError, match="manifest.json is missing"):
            _checks.preflight(p.spec, runs, memo=memo)
    assert calls == ["missing"]


def test_a_sweep_whose_folders_fail_midway_leaves_no_run_folder(
    synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcli.launch import _submit

    runs = tmp_path / "runs"
    planned = _sweep(synth_data, runs)
    real, made = _submit.create_run, []

    def full_disk(root: Path, run_id: str, spec: Any, **kw: Any) -> Any:
        if len(made) == 5:  # the sixth folder (the others are written from threads)
            raise OSError(28, "No space left on device")
        made.append(run_id)
        return real(root, run_id, spec, **kw)

    monkeypatch.setattr(_submit, "create_run", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _submit.submit_runs(planned, runs, mode="foreground")
    assert len(made) >= 5
    left = [p.name for p in runs.iterdir() if not p.name.startswith(("multiclass-", ".locks"))]
    assert left == [], "a failed submission left run folders behind"


def test_collect_adaptation_tables_by_value(lomo, tmp_path: Path) -> None:
    runs = lomo["runs"]
    wanted = [lomo["source"], lomo["zero"], lomo["k"]]
    done = run_cli(["collect", *map(str, wanted), "--out", str(tmp_path / "report"),
                    "--group-by", "kind", "--json"])
    tables = json.loads(done.stdout)["tables"]
    src = _json(lomo["source"] / "results.json")
    zero, k = (_json(lomo[x] / "results.json") for x in ("zero", "k"))
    rows = {r["shots"]: r for r in tables["adaptation"]["rows"]}
    assert set(rows) == {0, 3}
    for shots, res in ((0, zero), (3, k)):
        row = rows[shots]
        assert row["approach"] == "ERM" and row["held_out"] == src["held_out"] == "Paper"
        assert row["miou"]["mean"] == pytest.approx(res["miou"], abs=1e-6)
        assert row["in_domain"]["mean"] == pytest.approx(src["val"]["best_miou"], abs=1e-6)
        assert row["gap"] == pytest.approx(res["miou"] - src["val"]["best_miou"], abs=1e-6)
    assert rows[3]["vs_zero"] == pytest.approx(k["miou"] - zero["miou"], abs=1e-6)
    (total,) = [r for r in tables["adaptation_compute"]["rows"] if r["held_out"] == "(total)"]
    hours = [r["compute"]["node_hours"] for r in (src, zero, k)]
    assert total["node_h"] == pytest.approx(sum(hours), abs=1e-5)
    assert total["sources"] == 1 and total["adapt_runs"] == 2 and total["missing"] == 0
    assert (tmp_path / "report" / "figures" / "adaptation_shots.png").is_file()
    assert not any(r["kind"] == "adapt" for r in tables.get("domain", {}).get("rows", []))
    assert runs.is_dir()


@pytest.mark.slurm
def test_adaptation_array_on_slurm_each_task_writes_results(
    lomo, slurm_env: SlurmCluster  # noqa: F811
) -> None:
    runs = lomo["runs"]
    outs = _adapt(runs, lomo["source"].name, "adapt.shots=1,2", "adapt.steps=1", "seed=5",
                  "slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.time_min=5",
                  "slurm.signal_delay_s=30", mode="--cluster")
    assert [o["action"] for o in outs] == ["submitted"] * 2
    master = outs[0]["job_id"].split("_")[0]
    assert sorted(o["job_id"] for o in outs) == [f"{master}_0", f"{master}_1"]
    wait_for_state(master, {"COMPLETED"}, timeout=300)
    shots = []
    for o in outs:
        res = _json(Path(o["run_dir"]) / "results.json")
        assert res["kind"] == "adapt" and res["source_run"] == lomo["source"].name
        assert len(res["support_ids"]) == res["shots"]
        shots.append(res["shots"])
    assert sorted(shots) == [1, 2]
