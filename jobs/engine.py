"""The training engine every kind runs on: linear, resumable, and honest about what it measured.

`Engine(ctx, task).train()` owns everything generic; a kind's `jobs.task.Task` owns only its model,
data, loss, validation and results. Resume is exact on CPU: the state (modules, optimizer,
schedule, scaler, `TrainState` with each feed's sampler position of the last *consumed* batch,
RNG states, what the task adds) is saved at step boundaries and the data pipeline is a pure
function of (seed, epoch, position), so a run killed at any moment and resumed ends with the same
parameters as one that never stopped (tests/test_train.py, one line per kind).

A stop signal only sets a flag (jobs.signals); the loop notices it at the next step boundary,
saves, and returns `Outcome("stopped")`; jobs.runtime then hands the signal to submitit.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hcli.ckpt_identity import CheckpointIdentityError, checkpoint_identity
from hcli.fsutil import atomic_write_bytes
from hcli.spec import Spec
from jobs.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from jobs.data import resume_state
from jobs.progress import ProgressWriter
from jobs.runtime import JobContext, Outcome
from jobs.task import Env, Feed, Task, TrainState, iterate

__all__ = ["Engine", "seed_everything", "pick_device", "autocast_factory", "write_results"]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(spec: Spec) -> torch.device:
    if spec.train.device == "cuda" or (spec.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from hcli.errors import UserError

            raise UserError('train.device="cuda" but no GPU is visible; use train.device=auto')
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_factory(spec: Spec, device: torch.device) -> Callable[[], Any]:
    if spec.train.amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if spec.train.amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def write_results(ctx: JobContext, results: dict[str, Any], device: torch.device,
                  world_size: int) -> dict[str, Any]:
    """results.json through the run-folder contract (compute over every attempt)."""
    from jobs.results import write_results as contract_write

    return contract_write(ctx.run, results, device=str(device), world_size=world_size)


class Engine:
    """One run of one task: built once, then `train()` is the loop."""

    def __init__(self, ctx: JobContext, task_cls: type[Task]) -> None:
        from jobs.distributed import init_distributed
        from jobs.optim import build_optimizer, build_scheduler

        self.ctx, self.spec = ctx, ctx.spec
        spec, t = ctx.spec, ctx.spec.train
        self.dist = init_distributed()
        if t.threads:
            torch.set_num_threads(t.threads)
        seed_everything(spec.seed)
        self.device = pick_device(spec)
        self.env = Env(spec, self.device, self.dist.rank, self.dist.world_size, ctx.run.path,
                       ctx.run.run_id, autocast_factory(spec, self.device))
        self.task = task_cls(self.env)
        # The section the loop runs with from here on: the task's schedule (Task.train_spec).
        self.train_spec = t = self.task.train_spec()
        # Feeds before the model: the order in which the seeded RNG is consumed is part of a
        # run's results.
        self.feeds: dict[str, Feed] = self.task.build_feeds()
        model = self.task.build_model().to(self.device)
        self._record_provenance()
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = build_optimizer(model, t, groups=self.task.param_groups(model))
        self.scheduler = build_scheduler(self.optimizer, t)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=t.amp == "fp16" and self.device.type == "cuda"
        )
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.forward: Callable[..., Any] = model
        if self.dist.world_size > 1 and self.task.ddp_wrap:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            self.forward = self.ddp
        if t.compile:
            self.forward = torch.compile(self.forward)
        self.identity = checkpoint_identity(ctx.run.path)
        self.ckpt = CheckpointManager(ctx.run.checkpoints, keep=t.keep_checkpoints,
                                      rank=self.dist.rank, identity=self.identity)
        self.progress = ProgressWriter(self.env.run_dir, t.steps, enabled=ctx.is_main)
        self.state = TrainState()
        self._iters: dict[str, Iterator[dict[str, Any]]] = {}
        # Called after every optimizer step with the new step count (benchmarks time the loop
        # through it; nothing in the job needs it).
        self.after_step: list[Callable[[int], None]] = []

    def _record_provenance(self) -> None:
        """provenance.json: the ids this run sees and what its initialisation saw, written
        before any step (a resumed run writes the same again)."""
        seen = self.task.provenance()
        if seen is None or not self.ctx.is_main:
            return
        from jobs.provenance import record_start

        record_start(self.ctx.run, self.spec, manifest_path=self.spec.data.root / "manifest.json",
                     **seen)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_state": self.state.state_dict(),
            "task": self.task.state_dict(),
            "rng": capture_rng_state(),
            "identity": dict(self.identity),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("identity") != self.identity:
            raise CheckpointIdentityError(
                f"checkpoint state of {state.get('identity')} cannot resume {self.identity}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state.load_state_dict(state["train_state"])
        for name, position in self.state.samplers.items():
            self.feeds[name].sampler.load_state_dict(position)
        self.task.load_state_dict(state["task"])
        restore_rng_state(state["rng"])

    def resume(self) -> bool:
        found = self.ckpt.load_latest(map_location=self.device)
        if found is None:
            return False
        state, path = found
        self.load_state_dict(state)
        self.progress.event(self.state.step, "resumed", checkpoint=path.name)
        # Every rank says it: each rank's log shows which checkpoint it continued from.
        print(f"rank {self.dist.rank}: resumed from {path} at step {self.state.step}", flush=True)
        return True

    def save(self, blocking: bool) -> None:
        self.ckpt.save(self.state_dict(), self.state.step, blocking=blocking)
        if blocking:
            self.ckpt.wait()

    # -- one step ------------------------------------------------------------------------------

    def fetch(self, name: str) -> dict[str, Any]:
        """The next batch of feed `name`; its sampler position becomes the one to resume from."""
        if name not in self._iters:
            # Created lazily, after resume: a loader with workers starts drawing from its
            # sampler at once, so the sampler must already stand at the saved position.
            self._iters[name] = iterate(self.feeds[name])
        batch = next(self._iters[name])
        self.state.samplers[name] = resume_state(batch)
        return batch

    def _optimizer_step(self) -> float | None:
        grad_norm = None
        if self.ddp is None and self.dist.world_size > 1:
            from jobs.distributed import average_gradients

            average_gradients(self.model)
        if self.train_spec.clip_grad:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_spec.clip_grad)
            )
        scale = self.task.lr_scale()
        if scale != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= scale  # LambdaLR recomputes it from the base rate next step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def train_step(self) -> tuple[list[torch.Tensor], float | None]:
        """One optimizer step over `train.accum_steps` micro-batches."""
        accum = self.train_spec.accum_steps
        losses = []
        for i in range(accum):
            # Gradients are all-reduced once, on the last micro-batch (DDP's no_sync).
            last = i == accum - 1
            sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:
                loss = self.task.micro_step(self.fetch, self.forward)
                self.scaler.scale(loss * (1.0 / accum)).backward()
            losses.append(loss.detach())
        return losses, self._optimizer_step()

    def _stop_requested(self) -> bool:
        from jobs.distributed import any_rank

        return bool(any_rank(self.ctx.stop.requested))

    def validate(self) -> bool:
        """Validate, keep the best weights; returns True when early stopping says stop."""
        from jobs.distributed import broadcast_object

        t, s, task = self.train_spec, self.state, self.task
        if self.ctx.is_main:
            self.progress.note(phase="validate")
            metrics = task.validate(self.model)
            value = metrics[task.metric]
            value = float(value) if value is not None else 0.0
            s.last_metric = value
            if s.improves(value, task.mode, t.early_stop_min_delta):
                s.best_metric, s.best_step = value, s.step
                self._save_best(value)
                s.bad_validations = 0
            else:
                s.bad_validations += 1
            self.progress.log(s.step, "val", **{task.metric: value},
                              **{k: v for k, v in metrics.items() if k != task.metric})
            latest: dict[str, Any] = {f"val_{task.metric}": value}
            self.progress.update(s.step, **latest)
            self.progress.note(**{f"best_val_{task.metric}": s.best_metric,
                                  "best_step": s.best_step})
        s.bad_validations = broadcast_object(s.bad_validations)
        return t.early_stop_patience is not None and s.bad_validations >= t.early_stop_patience

    def _save_best(self, value: float) -> None:
        buf = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "step": self.state.step,
                    f"val_{self.task.metric}": value}, buf)
        atomic_write_bytes(self.best_path, buf.getvalue())

    @property
    def best_path(self) -> Path:
        return self.env.run_dir / "checkpoints" / "best.pt"

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> Outcome:
        t, s = self.train_spec, self.state
        self.task.on_start(self.model, resumed=self.resume())
        self.model.train()
        last_ckpt_time = time.monotonic()
        bar = tqdm(total=t.steps, initial=s.step, desc=self.ctx.run.run_id, mininterval=5,
                   disable=not self.ctx.is_main, dynamic_ncols=True)
        stopped_early = False
        t_log, n_log = time.perf_counter(), 0
        while s.step < t.steps:
            losses, grad_norm = self.train_step()
            s.step += 1
            for hook in self.after_step:
                hook(s.step)
            n_log += 1
            bar.update(1)
            if s.step % t.log_every_steps == 0 or s.step == t.steps:
                self._log_train(losses, grad_norm, n_log, time.perf_counter() - t_log, bar)
                t_log, n_log = time.perf_counter(), 0
            if s.step % t.val_every_steps == 0 or s.step == t.steps:
                stopped_early = self.validate()
            self._task_events(bar)
            due = (s.step % t.checkpoint_every_steps == 0
                   or time.monotonic() - last_ckpt_time > 60 * t.checkpoint_every_min)
            if self._stop_requested():
                self.save(blocking=True)
                bar.close()
                self.progress.event(s.step, "stopped", reason=self.ctx.stop.reason)
                self.progress.close(phase="stopped")
                return Outcome("stopped", s.step, self.ctx.stop.reason)
            if due or stopped_early:
                self.save(blocking=False)
                last_ckpt_time = time.monotonic()
            if stopped_early:
                self.progress.event(s.step, "early_stop", best_step=s.best_step)
                break
        bar.close()
        self.ckpt.wait()
        if self.ctx.is_main:
            self.finish(stopped_early)
        self.progress.close()
        return Outcome("completed", s.step)

    def _task_events(self, bar: Any) -> None:
        """What the task announced during the step (jobs.task.TaskEvent), written out."""
        for ev in self.task.pop_events():
            if not self.ctx.is_main:
                continue
            if ev.event is not None:
                self.progress.event(ev.step, ev.event, **ev.fields)
            if ev.progress:
                self.progress.note(**ev.progress)
            if ev.tag is not None:
                bar.set_description(f"{self.ctx.run.run_id} {ev.tag}", refresh=False)
            bar.write(f"step {ev.step}: {ev.message}")

    def _log_train(self, losses: list[torch.Tensor], grad_norm: float | None, n: int,
                   elapsed: float, bar: Any) -> None:
        t, s = self.train_spec, self.state
        loss = float(torch.stack(losses).mean())
        rate = n * t.batch_size * t.accum_steps * self.dist.world_size / max(elapsed, 1e-9)
        epoch = s.samplers.get(self.task.main_feed, {}).get("epoch")
        self.progress.log(s.step, "train", loss=loss, lr=self.optimizer.param_groups[-1]["lr"],
                          grad_norm=grad_norm, samples_per_s=round(rate, 2), epoch=epoch,
                          **self.task.train_logs())
        self.progress.update(s.step, epoch=epoch, loss=loss)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    # -- the end -------------------------------------------------------------------------------

    def finish(self, stopped_early: bool) -> None:
        """Score the selected weights (the best validation's, else the last) and write results."""
        s = self.state
        self.progress.note(phase="test")
        which = "last"
        if self.best_path.is_file():
            best = torch.load(self.best_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(best["model"])
            which = "best"
        own = self.task.finish(self.model, s)
        results = {
            "run_id": self.ctx.run.run_id,
            "kind": self.spec.kind,
            "backbone": self.spec.backbone_short,
            "checkpoint": which,
            "step": s.best_step if which == "best" else s.step,
            "final_step": s.step,
            "early_stopped": stopped_early,
            **own,
            "val": {
                f"best_{self.task.metric}": s.best_metric,
                "best_step": s.best_step,
                f"last_{self.task.metric}": s.last_metric,
                **own.get("val", {}),
            },
        }
        results = write_results(self.ctx, results, self.device, self.dist.world_size)
        if self.task.provenance() is not None:
            from jobs.provenance import record_end

            record_end(self.ctx.run, checkpoint=which, step=results["step"], final_step=s.step)
        self.task.report(results)

    def close(self) -> None:
        for it in self._iters.values():
            close = getattr(it, "close", None)
            if close is not None:
                close()
        self.task.close()
        self.ckpt.close()


def run_task(ctx: JobContext, task_cls: type[Task]) -> Outcome:
    """A kind's workload: `run = functools.partial(run_task, task_cls=MyTask)`."""
    engine = Engine(ctx, task_cls)
    try:
        return engine.train()
    finally:
        engine.close()
