"""Jobs end to end on tiny synthetic data: outputs, exact resume of every kind, early stopping."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import HCLI, REPO, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def _only_run(runs: Path, kind: str | None = None) -> Path:
    """The one run in `runs` (of `kind`: a SETUP source beside it is not it)."""
    prefix = f"{kind.split(':')[0]}-" if kind else ""
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".") and
              p.name.startswith(prefix)]
    return run


def _final_model(run: Path, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / f"step-{step:08d}.pt", weights_only=True)
    return state["model"]


RESUME_BASE = (
    "train.steps=40",
    "train.checkpoint_every_steps=4",
    "train.keep_checkpoints=2",
    "data.num_workers=1",
    "train.val_every_steps=20",
)
# The exact-resume test runs once per line: a kind and what its resume spec adds to RESUME_BASE.
# `kind:variant` labels a second configuration of one kind.
RESUMABLE: dict[str, tuple[str, ...]] = {
    "multiclass": ("model.hierarchical=true",),
    "mae": ("mae.patch_size=16", "mae.norm_target=true"),
    # The other two families through the same mask-token mechanism (jobs/models/encoders.py
    # SHRUNKEN_ENCODER_KWARGS): Swin's NHWC patch embedding, MaxViT's stride-2 stem.
    "mae:swin": ("model.backbone=swin",
                 "model.encoder_kwargs={embed_dim: 24, depths: [1, 1, 1, 1], "
                 "num_heads: [1, 1, 1, 1]}", "mae.patch_size=16", "mae.loss=mse"),
    "mae:maxvit": ("model.backbone=maxvit",
                   "model.encoder_kwargs={embed_dim: [16, 32, 64, 128], depths: [1, 1, 1, 1], "
                   "stem_width: 16, transformer_dim_head: 16}", "mae.patch_size=16",
                   "mae.decoder=conv"),
    # With prototypes: k-means at the start of a fresh run only, adapted in the inner loop.
    "meta": ("data.protocol=lomo", "meta.tasks_per_step=2", "meta.inner_steps=1",
             "model.attention=prototypes"),
    "multiclass:curriculum": ("model.hierarchical=true", "model.attention=prototypes",
                              "train.curriculum=[binary,coarse,fine]"),
    # Its schedule is adapt.steps (the kill lands in 5..34); train.* keeps the cadences.
    "adapt": ("adapt.shots=3", "adapt.steps=40", "adapt.lr=0.001"),
}
# A kind that starts from a finished run names it here: that run's kind and overrides. It is
# trained once, copied into every runs folder of the test before the run under test, and
# passed to it with --from.
SETUP: dict[str, tuple[str, tuple[str, ...]]] = {
    "adapt": ("multiclass", ("data.protocol=lomo", "data.fold=4", "train.steps=6",
                             "train.val_every_steps=3", "train.warmup_steps=1")),
}


def _train(runs: Path, data: Path, *extra: str, kind: str = "multiclass",
           args: tuple[str, ...] = ()) -> Path:
    run_cli(["submit", kind.split(":")[0], "--foreground", "--runs-dir", str(runs), *args,
             *tiny_overrides(data, *extra)])
    return _only_run(runs, kind)


class _References(dict):
    """One uninterrupted run of each kind's resume spec, trained when first asked for."""

    def __init__(self, data: Path, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.data, self.factory = data, factory
        self.sources: dict[str, Path] = {}

    def __missing__(self, kind: str) -> Path:
        runs = self.factory.mktemp(f"ref-{kind}") / "runs"
        self[kind] = _train(runs, self.data, *RESUME_BASE, *RESUMABLE[kind], kind=kind,
                            args=self.setup(kind, runs))
        return self[kind]

    def setup(self, kind: str, runs: Path) -> tuple[str, ...]:
        """`kind`'s SETUP run copied into `runs` (trained on first use); the CLI arguments
        that name it."""
        if kind not in SETUP:
            return ()
        if kind not in self.sources:
            source_kind, overrides = SETUP[kind]
            self.sources[kind] = _train(self.factory.mktemp(f"setup-{kind}") / "runs",
                                        self.data, *overrides, kind=source_kind)
        source = self.sources[kind]
        shutil.copytree(source, runs / source.name)
        return ("--from", source.name)


@pytest.fixture(scope="module")
def references(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> _References:
    return _References(synth_data, tmp_path_factory)


@pytest.fixture(scope="module")
def reference(references: _References) -> Path:
    return references["multiclass"]


def test_run_folder_holds_what_the_contract_says(reference: Path):
    state = json.loads((reference / "state.json").read_text())
    assert state["state"] == "COMPLETED" and state["restarts"] == 0
    results = json.loads((reference / "results.json").read_text())
    for key in (
        "miou",
        "per_class_iou",
        "per_class_f1",
        "binary_miou",
        "rare_miou",
        "confusion",
        "checkpoint",
        "baseline_all_clean_miou",
        "coarse_miou",
    ):
        assert key in results
    assert results["checkpoint"] in ("best", "last")
    assert len(results["per_class_iou"]) == 16 and len(results["confusion"]) == 16
    progress = json.loads((reference / "progress.json").read_text())
    assert progress["step"] == 40 and progress["total_steps"] == 40 and progress["heartbeat"]
    lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert {x.get("split") for x in lines} >= {"train", "val"}
    kept = sorted(p.name for p in (reference / "checkpoints").glob("step-*.pt"))
    assert kept == ["step-00000036.pt", "step-00000040.pt"]  # keep_checkpoints=2
    assert list((reference / "figures" / "samples").glob("*_pred.png"))
    assert list((reference / "tb").iterdir())  # TensorBoard events


def _start(runs: Path, data: Path, kind: str, args: tuple[str, ...]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *HCLI,
            "submit",
            kind.split(":")[0],
            "--foreground",
            "--runs-dir",
            str(runs),
            *args,
            *tiny_overrides(data, *RESUME_BASE, *RESUMABLE[kind]),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _last_train_step(runs: Path, kind: str = "") -> int:
    steps = [0]
    for path in runs.glob(f"{kind.split(':')[0]}*/metrics.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("split") == "train":
                steps.append(record["step"])
    return max(steps)


def _kill_seed() -> int:
    """A fresh seed per run (HCLI_KILL_SEED repeats one); printed, so a failure names it."""
    seed = int(os.environ.get("HCLI_KILL_SEED", random.randrange(2**31)))
    print(f"kill step drawn with HCLI_KILL_SEED={seed}")
    return seed


def _kill_at_random_step(proc: subprocess.Popen[str], runs: Path, kind: str = "") -> int:
    # After the first checkpoint, before the end.
    target = random.Random(_kill_seed()).randint(5, 34)
    deadline = time.time() + 300
    while time.time() < deadline and _last_train_step(runs, kind) < target:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return target


@pytest.mark.parametrize("kind", list(RESUMABLE))
@pytest.mark.parametrize("damage_newest", [False, True], ids=["kill", "kill+damaged-checkpoint"])
def test_sigkill_and_resume_is_bitwise_identical(references, synth_data, tmp_path, damage_newest,
                                                 kind):
    reference = references[kind]
    runs = tmp_path / "runs"
    args = references.setup(kind, runs)
    proc = _start(runs, synth_data, kind, args)
    target = _kill_at_random_step(proc, runs, kind)
    run = _only_run(runs, kind)
    assert run.name == reference.name  # same spec, same identity
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "RUNNING", f"killed near step {target}"  # the job never knew
    status = json.loads(run_cli(["status", "--json", "--runs-dir", str(runs)]).stdout)
    (row,) = [r for r in status if r["run_id"] == run.name]
    assert row["state"] == "FAILED"  # the process is gone: status says so
    again = run_cli(["submit", kind.split(":")[0], "--foreground", "--runs-dir", str(runs), *args,
                     *tiny_overrides(synth_data, *RESUME_BASE, *RESUMABLE[kind])], check=False)
    assert again.returncode == 2 and f"hcli resume {run.name}" in again.stderr
    done = sorted((run / "checkpoints").glob("step-*.pt.done"))
    if damage_newest:
        newest = done[-1].with_suffix("")
        newest.write_bytes(newest.read_bytes()[:1000])  # truncated, marker still there
    resumed = run_cli(["resume", run.name, "--foreground", "--runs-dir", str(runs)])
    if damage_newest:
        assert "damaged" in resumed.stderr.lower() or "fall" in resumed.stderr.lower()
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "COMPLETED" and state["restarts"] == 1
    ours, theirs = _final_model(run, 40), _final_model(reference, 40)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    a = json.loads((run / "results.json").read_text())
    b = json.loads((reference / "results.json").read_text())
    # Every figure of the results but the compute used (the resumed run used two attempts).
    figures = [k for k in b if isinstance(b[k], float | dict) and k != "compute"]
    assert figures and all(a[k] == b[k] for k in figures), kind


def test_early_stopping_stops(synth_data, tmp_path):
    run = _train(
        tmp_path / "runs",
        synth_data,
        "train.steps=40",
        "train.val_every_steps=4",
        "train.early_stop_patience=2",
        "train.early_stop_min_delta=1.0",
    )
    results = json.loads((run / "results.json").read_text())
    # First validation sets the best; two more without a gain of 1.0 mIoU stop it at step 12.
    assert results["early_stopped"] is True and results["final_step"] == 12
    assert results["checkpoint"] == "best" and results["step"] == 4


def test_sigterm_saves_and_resume_continues(synth_data, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            *HCLI,
            "submit",
            "multiclass",
            "--foreground",
            "--runs-dir",
            str(runs),
            *tiny_overrides(
                synth_data,
                "train.steps=80",
                "train.checkpoint_every_steps=1000",
                "train.val_every_steps=1000",
            ),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and _last_train_step(runs) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    run = _only_run(runs)
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "CANCELLED" and "hcli resume" in state["message"]
    saved = sorted((run / "checkpoints").glob("step-*.pt.done"))
    assert saved, "the stop signal must leave a checkpoint (none was due by the step count)"
    stopped_at = int(saved[-1].name[5:13])
    assert 4 <= stopped_at < 80
    assert "CANCELLED" in run_cli(["status", "--runs-dir", str(runs)]).stdout
    run_cli(["resume", run.name, "--foreground", "--runs-dir", str(runs)])
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "COMPLETED" and state["restarts"] == 1


def test_bf16_channels_last_checkpointing_accumulation(synth_data, tmp_path):
    run = _train(
        tmp_path / "runs",
        synth_data,
        "train.amp=bf16",
        "train.channels_last=true",
        "model.grad_checkpointing=true",
        "train.accum_steps=2",
        "train.schedule=cosine",
        "loss.name=ce",
        "loss.class_weights=log",
        "model.hierarchical=true",
        "train.steps=6",
        "train.val_every_steps=6",
    )
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["miou"] <= 1.0
    losses = [
        json.loads(x)["loss"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if '"split": "train"' in x
    ]
    assert losses and all(loss == loss and loss < 100 for loss in losses)  # finite


def test_init_from_refuses_a_run_that_saw_the_test_images(reference, synth_data, tmp_path):
    runs = tmp_path / "runs"
    # Fold 1's test images are in fold 0's training set: initialising from it would leak.
    leak = run_cli(
        [
            "submit",
            "multiclass",
            "--foreground",
            "--runs-dir",
            str(runs),
            *tiny_overrides(
                synth_data, "data.fold=1", "train.steps=3", f"model.init_from={reference}"
            ),
        ],
        check=False,
    )
    assert (
        leak.returncode == 2 and "model.init_from" in leak.stderr and "test images" in leak.stderr
    )
    # Same fold: the earlier run never trained on these test images, so it may initialise this one.
    ok = run_cli(
        [
            "submit",
            "multiclass",
            "--foreground",
            "--runs-dir",
            str(runs),
            *tiny_overrides(
                synth_data,
                "train.steps=3",
                "train.val_every_steps=3",
                f"model.init_from={reference}",
            ),
        ]
    )
    assert "encoder initialised from" in ok.stdout


def test_torch_compile_path_trains_on_cpu(synth_data, tmp_path):
    # Inductor compiles for the CPU here (~1 min): the same code path a GPU run takes.
    run = _train(tmp_path / "runs", synth_data, "train.compile=true", "train.steps=3",
                 "train.warmup_steps=1", "train.val_every_steps=3", "train.overlays=0")
    results = json.loads((run / "results.json").read_text())
    assert results["final_step"] == 3 and 0.0 <= results["miou"] <= 1.0
