"""The binary → coarse → fine curriculum: head weights per stage, stage ends, its state, the spec
rules. (Exact resume across a stage boundary: tests/test_train.py, `multiclass:curriculum`.)"""

from __future__ import annotations

import pytest
import torch

from hcli.errors import SpecError
from hcli.spec import LossSpec, load_spec
from jobs.curriculum import Curriculum, stage_head_weights
from jobs.losses import SegLoss

CURRICULUM = ["model.hierarchical=true", "train.curriculum=[binary,coarse,fine]",
              "train.steps=12", "train.warmup_steps=2"]


def test_head_weights_per_stage() -> None:
    loss = LossSpec(coarse_weight=0.3, binary_weight=0.2)
    assert stage_head_weights("binary", loss) == {"fine": 0.0, "coarse": 0.0, "binary": 1.0}
    assert stage_head_weights("coarse", loss) == {"fine": 0.0, "coarse": 1.0, "binary": 0.2}
    assert stage_head_weights("fine", loss) == {"fine": 1.0, "coarse": 0.3, "binary": 0.2}


def test_seg_loss_carries_only_the_stage_heads() -> None:
    torch.manual_seed(0)
    spec = LossSpec(coarse_weight=0.3, binary_weight=0.2)
    crit = SegLoss(spec, hierarchical=True, n_coarse=5)
    outputs = {"fine": torch.randn(2, 16, 8, 8, requires_grad=True),
               "coarse": torch.randn(2, 5, 8, 8), "binary": torch.randn(2, 2, 8, 8)}
    targets = {"fine": torch.randint(0, 16, (2, 8, 8)), "coarse": torch.randint(0, 5, (2, 8, 8)),
               "binary": torch.randint(0, 2, (2, 8, 8))}
    plain, parts = crit(outputs, targets)
    binary, _ = crit(outputs, targets, stage_head_weights("binary", spec))
    coarse, _ = crit(outputs, targets, stage_head_weights("coarse", spec))
    fine, _ = crit(outputs, targets, stage_head_weights("fine", spec))
    torch.testing.assert_close(binary, parts["binary"])
    torch.testing.assert_close(coarse, parts["coarse"] + 0.2 * parts["binary"])
    torch.testing.assert_close(fine, plain)  # the last stage is the usual loss
    binary.backward()
    assert outputs["fine"].grad is not None and outputs["fine"].grad.abs().sum() == 0


def test_stages_end_at_their_fractions_and_state_round_trips() -> None:
    spec = load_spec(None, overrides=[*CURRICULUM, "train.curriculum_fractions=[0.25,0.25,0.5]",
                                      "train.curriculum_lr_mults=[2,1,0.5]"])
    cur = Curriculum.from_spec(spec.train)
    assert cur is not None and cur.ends == (3, 6, 12)
    seen = []
    for step in range(12):
        cur.advance(step)
        seen.append(cur.stage)
    assert seen == ["binary"] * 3 + ["coarse"] * 3 + ["fine"] * 6
    assert cur.lr_mult == 0.5
    fresh = Curriculum.from_spec(spec.train)
    assert fresh is not None
    fresh.load_state_dict(cur.state_dict())
    assert (fresh.stage, fresh.start_step) == ("fine", 6)
    assert Curriculum.from_spec(load_spec(None).train) is None


def test_plateau_ends_a_stage_early() -> None:
    spec = load_spec(None, overrides=[*CURRICULUM, "train.curriculum_plateau=2"])
    cur = Curriculum.from_spec(spec.train)
    assert cur is not None
    assert not cur.plateaued({"binary_miou": 0.5})
    assert not cur.plateaued({"binary_miou": 0.4})
    assert cur.plateaued({"binary_miou": 0.5})  # two validations without a gain
    cur.end_stage(2)
    assert cur.stage == "coarse" and cur.start_step == 2 and cur.best is None
    assert not cur.plateaued({"coarse_miou": 0.1})  # the coarse stage watches its own figure
    cur.advance(8)
    assert cur.stage == "fine"
    assert not cur.plateaued({"miou": 0.0}) and not cur.plateaued({"miou": 0.0})


@pytest.mark.parametrize("overrides, needle", [
    (["train.curriculum=[binary,coarse,fine]"], "model.hierarchical=true"),
    (["model.hierarchical=true", "train.curriculum=[coarse,binary,fine]"], "binary to coarse"),
    (["model.hierarchical=true", "train.curriculum=binary"], "bare comma makes a sweep"),
    (["model.hierarchical=true", "train.curriculum=[coarse,fine]",
      "train.curriculum_fractions=[0.5,0.3]"], "sum to 1"),
    (["model.hierarchical=true", "train.curriculum=[coarse,fine]",
      "train.curriculum_lr_mults=[1]"], "one per stage"),
    (["model.hierarchical=true", "train.curriculum=[coarse,fine]",
      "train.curriculum_freeze_encoder=[binary]"], "not stages"),
])
def test_spec_rules_say_how_to_fix(overrides: list[str], needle: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(None, overrides=overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_yaml_string_is_the_list_it_spells() -> None:
    spec = load_spec(None, overrides=["model.hierarchical=true", "train.curriculum='coarse,fine'"])
    assert spec.train.curriculum == ("coarse", "fine")


def test_collect_marks_where_each_stage_began(tmp_path) -> None:
    from hcli.report import load_run
    from tests.test_collect import make_run

    lines = [{"step": s, "time": "2026-11-24T10:00:00+00:00", "split": "train", "loss": 1.0,
              "stage": k} for s, k in ((2, 0), (4, 0), (6, 1), (8, 1), (10, 2), (12, 2))]
    run = make_run(tmp_path, "multiclass-convnext-cur", miou=0.3, metrics=lines)
    assert load_run(run).stage_steps == [4, 8]


def test_stage_lr_multiplier_scales_the_engines_optimizer_step(tmp_path) -> None:
    import contextlib
    from types import SimpleNamespace

    from jobs.engine import Engine
    from jobs.multiclass.task import MulticlassTask
    from jobs.optim import build_scheduler
    from jobs.task import Env

    spec = load_spec(None, overrides=[*CURRICULUM, "train.curriculum_lr_mults=[2,1,0.5]",
                                      "train.warmup_steps=0", "train.clip_grad=null"])
    task = MulticlassTask(Env(spec, torch.device("cpu"), 0, 1, tmp_path, "t",
                              contextlib.nullcontext))
    task.curriculum = Curriculum.from_spec(spec.train)
    # The engine's optimizer step on a one-weight model (the rest of the engine is not needed).
    engine = Engine.__new__(Engine)
    model = torch.nn.Linear(1, 1, bias=False)
    engine.spec, engine.task, engine.model, engine.ddp = spec, task, model, None
    engine.train_spec = spec.train  # the section the loop runs with (the task may set it)
    engine.dist = SimpleNamespace(world_size=1)
    engine.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    engine.scheduler = build_scheduler(engine.optimizer, spec.train)
    engine.scaler = torch.amp.GradScaler("cuda", enabled=False)
    for stage, mult in ((0, 2.0), (0, 2.0), (2, 0.5)):
        task.curriculum.index = stage  # type: ignore[union-attr]
        assert task.lr_scale() == mult
        lr = engine.optimizer.param_groups[0]["lr"]  # the schedule's rate for this step
        before = model.weight.item()
        model.weight.grad = torch.ones_like(model.weight)
        engine._optimizer_step()
        assert before - model.weight.item() == pytest.approx(lr * mult)
        # The schedule set the next rate from its base: the multiplier never compounds.
        assert engine.optimizer.param_groups[0]["lr"] <= 1.0


def test_collect_takes_stage_boundaries_from_the_stage_events(tmp_path) -> None:
    from hcli.report import load_run
    from tests.test_collect import make_run

    t = "2026-11-24T10:00:00+00:00"
    lines = [{"step": s, "time": t, "split": "train", "loss": 1.0, "stage": k}
             for s, k in ((2, 0), (4, 0), (6, 1), (8, 1), (10, 2), (12, 2))]
    lines += [{"step": s, "time": t, "event": "stage", "stage": k, "reason": r}
              for s, k, r in ((0, "binary", "start"), (3, "coarse", "plateau"),
                              (7, "fine", "schedule"), (7, "fine", "schedule"))]  # resumed
    run = make_run(tmp_path, "multiclass-convnext-ev", miou=0.3, metrics=lines)
    assert load_run(run).stage_steps == [3, 7]  # exact, not the logged steps 4 and 8


def test_curriculum_state_keeps_each_stages_start() -> None:
    spec = load_spec(None, overrides=[*CURRICULUM, "train.curriculum_plateau=1"])
    cur = Curriculum.from_spec(spec.train)
    assert cur is not None
    cur.plateaued({"binary_miou": 0.5})
    assert cur.plateaued({"binary_miou": 0.5})
    cur.end_stage(2)
    cur.advance(8)
    assert cur.progress() == {"stage": "fine", "number": 3,
                              "stages": ["binary", "coarse", "fine"], "began": [0, 2, 8]}
    assert (cur.causes, cur.cause) == (["start", "plateau", "schedule"], "schedule")
    back = Curriculum.from_spec(spec.train)
    assert back is not None
    back.load_state_dict(cur.state_dict())
    assert back.progress() == cur.progress() and back.cause == "schedule"
    # A checkpoint from before the history: the earlier starts from the stage ends.
    old = {k: v for k, v in cur.state_dict().items() if k not in ("began", "causes")}
    back = Curriculum.from_spec(spec.train)
    assert back is not None
    back.load_state_dict(old)
    assert back.began == [0, 4, 8]


@pytest.mark.slow
def test_a_curriculum_run_announces_each_stage(synth_data, tmp_path) -> None:
    """Stage events at the exact steps in metrics.jsonl, the stage in progress.json, a line in
    the log, and the boundaries on the learning-curve figure's record."""
    import json

    from hcli.report import load_run
    from tests.conftest import run_cli, tiny_overrides

    runs = tmp_path / "runs"
    done = run_cli(["submit", "multiclass", "--foreground", "--runs-dir", str(runs),
                    *tiny_overrides(synth_data, "model.hierarchical=true",
                                    "train.curriculum=[binary,coarse,fine]",
                                    "train.curriculum_fractions=[0.25,0.25,0.5]")])
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    events = [(x["step"], x["stage"], x["reason"]) for x in lines if x.get("event") == "stage"]
    assert events == [(0, "binary", "start"), (3, "coarse", "schedule"), (6, "fine", "schedule")]
    progress = json.loads((run / "progress.json").read_text())
    assert progress["curriculum"] == {"stage": "fine", "number": 3,
                                      "stages": ["binary", "coarse", "fine"], "began": [0, 3, 6]}
    assert "step 3: curriculum stage coarse 2/3 begins (stage binary ended" in done.stdout
    assert load_run(run).stage_steps == [3, 6]
