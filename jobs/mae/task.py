"""The mae kind: SimMIM-style masked-image pretraining of a segmenter's encoder.

A task on the shared engine: unlabelled crops of the images `mae.images` allows (the crop
pipeline of the segmentation jobs, labels ignored, so sampling resumes exactly), a mask drawn
per crop from its draw key, the masked-pixel loss, and validation on held-out images beside the
losses of filling every hidden patch with a mean colour (of its visible neighbours; its own).
The end product is `encoder.pt`: the encoder's tensors under the segmenter's key names, which
`model.init_from` loads.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any

import torch

from hcli.data.manifest import load_manifest
from hcli.data.splits import get_fold
from hcli.errors import UserError
from hcli.fsutil import atomic_write_bytes
from jobs.data import build_eval_dataset, build_train_loader
from jobs.engine import run_task
from jobs.mae.figures import save_grid
from jobs.mae.masking import (
    batch_masks,
    masked_loss,
    neighbour_mean_fill,
    patch_mean_fill,
    patch_normalise,
    pixel_mask,
)
from jobs.mae.model import MaeModel
from jobs.models import build_encoder
from jobs.task import Feed, Fetch, Task, TrainState

__all__ = ["ENCODER_FILE", "MaeTask", "run", "select_ids"]

ENCODER_FILE = "encoder.pt"
# Held-out windows per validation image (its corners): enough to average over, cheap to run.
_VAL_WINDOWS_PER_IMAGE = 4
_FIGURE_ROWS = 4
# The "epoch" in validation mask keys: one no training draw reaches.
_VAL_EPOCH = 2**30


def select_ids(images: str, train: list[str], val: list[str], test: list[str]) -> list[str]:
    """The ids `mae.images` names: train, train+val, or all (test images included)."""
    if images == "train":
        return list(train)
    if images == "train+val":
        return [*train, *val]
    return [*train, *val, *test]


class MaeTask(Task):
    metric = "loss"
    mode = "min"
    micro_steps = 0

    def build_feeds(self) -> dict[str, Feed]:
        spec, env, mae = self.spec, self.env, self.spec.mae
        self.manifest = load_manifest(spec.data.root)
        self.fold = get_fold(self.manifest, spec.data, spec.seed)
        if not self.fold.val:
            raise UserError(
                "kind=mae needs held-out validation images but the fold has none; set "
                "data.val_fraction above 0 (the test images must stay unseen)"
            )
        self.ids = select_ids(mae.images, self.fold.train, self.fold.val, self.fold.test)
        self.transductive = mae.images == "all"
        if self.transductive and env.is_main:
            print(f"mae.images=all: pretraining sees the {len(self.fold.test)} test images of "
                  f"{self.fold.name} (transductive); fine-tuning on this fold from it is refused "
                  "unless model.init_allow_test_overlap=true", flush=True)
        # Every image equally often: the repeat factors of the segmentation jobs follow damage
        # classes, which unlabelled pretraining has no reason to favour.
        flat = spec.model_copy(deep=True)
        flat.data.rare_repeat_threshold = 0.0
        loader, sampler = build_train_loader(
            flat, self.manifest, self.ids, rank=env.rank, world_size=env.world_size,
            pin_memory=env.device.type == "cuda",
        )
        self.val_set = build_eval_dataset(spec, self.manifest, self.fold.val)
        return {"train": Feed(loader, sampler)}

    def build_model(self) -> torch.nn.Module:
        spec = self.spec
        encoder = build_encoder(spec.model.backbone, spec.data.crop_size,
                                spec.model.encoder_kwargs, spec.model.pretrained)
        model = MaeModel(encoder, spec.data.crop_size, spec.mae.patch_size,
                         spec.model.backbone, decoder=spec.mae.decoder)
        if spec.model.init_from:
            from jobs.init_from import load_init_weights

            source = load_init_weights(model, spec, self.manifest, self.fold.test,
                                       self.env.run_dir.parent)
            print(f"encoder initialised from {source}", flush=True)
        return model

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        assert isinstance(model, MaeModel)
        return model.param_groups(self.spec.train.lr, self.spec.train.weight_decay)

    def provenance(self) -> dict[str, Any]:
        init = self.spec.model.init_from
        return {"train_ids": self.ids, "val_ids": self.fold.val,
                "init_from": [str(init)] if init else []}

    # -- training ------------------------------------------------------------------------------

    def _loss(self, model: Callable[..., Any], images: torch.Tensor, mask: torch.Tensor,
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, reconstruction in image space, pixel mask) of one batch."""
        mae = self.spec.mae
        with self.env.autocast():
            pred = model(images, mask.to(images.device))
        pred = pred.float()
        pmask = pixel_mask(mask, mae.patch_size).to(images.device)
        if valid is not None:
            pmask = pmask * valid
        target = patch_normalise(images, mae.patch_size) if mae.norm_target else images
        loss = masked_loss(pred, target, pmask, mae.loss)
        recon = pred
        if mae.norm_target:
            # Shown in image space with the true patch statistics (as MAE's figures do).
            mean = patch_mean_fill(images, mae.patch_size)
            std = (patch_mean_fill(images * images, mae.patch_size) - mean * mean)
            recon = pred * (std.clamp_min(0) + 1e-6).sqrt() + mean
        return loss, recon, pmask

    def _masks(self, keys: list[tuple[int, ...]], size: tuple[int, int]) -> torch.Tensor:
        mae = self.spec.mae
        return batch_masks(keys, self.spec.seed, size, mae.patch_size, mae.mask_ratio)

    def micro_step(self, fetch: Fetch, forward: Callable[..., Any]) -> torch.Tensor:
        self.micro_steps += 1
        batch = fetch("train")
        images = batch["image"].to(self.env.device, non_blocking=True)
        if self.spec.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        keys = list(zip(batch["epoch"], batch["position"], batch["index"], strict=True))
        mask = self._masks(keys, tuple(images.shape[-2:]))  # type: ignore[arg-type]
        loss, _, _ = self._loss(forward, images, mask)
        return loss

    # -- validation ----------------------------------------------------------------------------

    def _windows(self) -> list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]:
        """Held-out windows: (image (3,c,c), valid (1,c,c), mask key), the corners of each
        validation image, padded where the image is smaller than the crop."""
        c = self.spec.data.crop_size
        out: list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]] = []
        for i in range(len(self.val_set)):
            x = self.val_set[i]["image"]
            h, w = x.shape[-2:]
            corners = sorted({(y, z) for y in (0, max(0, h - c)) for z in (0, max(0, w - c))})
            for j, (y, z) in enumerate(corners[:_VAL_WINDOWS_PER_IMAGE]):
                win = x[:, y:y + c, z:z + c]
                image = torch.zeros(3, c, c)
                valid = torch.zeros(1, c, c)
                image[:, :win.shape[1], :win.shape[2]] = win
                valid[:, :win.shape[1], :win.shape[2]] = 1
                # Fixed masks (a key no training draw has): every validation scores the same.
                out.append((image, valid, (_VAL_EPOCH, i, j)))
        return out

    @torch.no_grad()
    def _score(self, model: torch.nn.Module, figure: str | None) -> dict[str, float]:
        was = model.training
        model.eval()
        if not hasattr(self, "_val_windows"):
            self._val_windows = self._windows()
        mae, device = self.spec.mae, self.env.device
        bs = self.spec.train.batch_size
        total = {"loss": 0.0, "patch_mean": 0.0, "neighbour_mean": 0.0}
        weight = 0.0
        for start in range(0, len(self._val_windows), bs):
            chunk = self._val_windows[start:start + bs]
            images = torch.stack([w[0] for w in chunk]).to(device)
            valid = torch.stack([w[1] for w in chunk]).to(device)
            mask = self._masks([w[2] for w in chunk], tuple(images.shape[-2:]))  # type: ignore[arg-type]
            batch_loss, recon, pmask = self._loss(model, images, mask, valid)
            target = patch_normalise(images, mae.patch_size) if mae.norm_target else images
            own = masked_loss(patch_mean_fill(target, mae.patch_size), target, pmask, mae.loss)
            near = masked_loss(neighbour_mean_fill(target, mask, mae.patch_size), target, pmask,
                               mae.loss)
            n = float(pmask.sum())
            total["loss"] += float(batch_loss) * n
            total["patch_mean"] += float(own) * n
            total["neighbour_mean"] += float(near) * n
            weight += n
            if figure and start == 0:
                k = min(_FIGURE_ROWS, len(chunk))
                save_grid(self.env.run_dir / "figures" / figure, images[:k], recon[:k],
                          pmask[:k])
        model.train(was)
        mean = {k: v / max(weight, 1.0) for k, v in total.items()}
        base = mean["neighbour_mean"]
        return {"loss": mean["loss"], "baseline_neighbour_mean_loss": base,
                "baseline_patch_mean_loss": mean["patch_mean"],
                "loss_vs_baseline": mean["loss"] / base if base else float("nan")}

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        # The engine does not pass the step; the task counts its own micro-steps (saved with
        # the training state, so a resumed run names its figures the same).
        step = self.micro_steps // self.spec.train.accum_steps
        return self._score(model, f"recon-step{step:08d}.png")

    def state_dict(self) -> dict[str, Any]:
        return {"micro_steps": self.micro_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.micro_steps = int(state.get("micro_steps", 0))

    # -- the end -------------------------------------------------------------------------------

    def finish(self, model: torch.nn.Module, state: TrainState) -> dict[str, Any]:
        assert isinstance(model, MaeModel)
        scores = self._score(model, "recon-final.png")
        buf = io.BytesIO()
        torch.save(model.encoder_state_dict(), buf)
        atomic_write_bytes(self.env.run_dir / ENCODER_FILE, buf.getvalue())
        t = self.spec.train
        seen = state.step * t.batch_size * t.accum_steps * self.env.world_size
        return {
            "protocol": self.spec.data.protocol,
            "fold": self.spec.data.fold,
            "held_out": self.fold.held_out,
            "recon_loss": scores["loss"],
            "baseline_neighbour_mean_loss": scores["baseline_neighbour_mean_loss"],
            "baseline_patch_mean_loss": scores["baseline_patch_mean_loss"],
            "loss_vs_baseline": scores["loss_vs_baseline"],
            "loss_fn": self.spec.mae.loss,
            "images": self.spec.mae.images,
            "transductive": self.transductive,
            "n_images": len(self.ids),
            "val_images": len(self.fold.val),
            "val_held_out": self.spec.mae.images == "train",
            "images_seen": seen,
            "epochs": seen / max(1, len(self.ids)),
            "encoder_file": ENCODER_FILE,
            "figures": sorted(p.name for p in (self.env.run_dir / "figures").glob("recon-*.png")),
        }

    def report(self, results: dict[str, Any]) -> None:
        lines = [
            f"held-out reconstruction loss ({results['loss_fn']}, masked pixels) "
            f"{results['recon_loss']:.4f} ({results['checkpoint']} checkpoint, step "
            f"{results['step']}); each hidden patch filled with the mean colour of its visible "
            f"neighbours: {results['baseline_neighbour_mean_loss']:.4f}, with its own true mean "
            f"colour (an oracle): {results['baseline_patch_mean_loss']:.4f}",
            f"{results['images_seen']} crops seen over {results['n_images']} images "
            f"(mae.images={results['images']}, {results['epochs']:.1f} epochs); encoder "
            f"weights in {results['encoder_file']}",
        ]
        if results["transductive"]:
            lines.append("TRANSDUCTIVE: this pretraining saw the fold's test images")
        print("\n".join(lines), flush=True)


run = functools.partial(run_task, task_cls=MaeTask)
