"""Segmentation losses: Dice + Focal (or cross-entropy), class weights, auxiliary heads.

Every loss ignores label 255 and is computed in float32 with autocast off, so bf16/fp16 logits
cannot overflow the softmax or underflow the log. Class weights come from the manifest
(`hcli.data.stats.weights_from_counts`) and are passed in as a tensor of 16 values.

Definitions (valid pixels = label != 255):
- Focal (Lin et al. 2017, softmax form): sum_i a_{y_i} (1 - p_i)^gamma (-log p_i) / sum_i a_{y_i},
  with p_i the probability of the true class and a the class weights (1 without). With gamma=0
  this is exactly `F.cross_entropy(weight=a, ignore_index=255)`.
- Dice (soft, multiclass): per class c present in the batch's labels,
  d_c = 2 sum(p_c t_c) / (sum(p_c) + sum(t_c)) over the batch's valid pixels; loss = 1 - mean d_c.
  Classes absent from the labels are left out: their Dice is 0 whatever is predicted, so they
  would only add a constant that dilutes the present classes' signal. Dice is unweighted; the
  Focal term carries the class weights.
Written here because torch has no multiclass focal/Dice loss and MONAI/smp are not dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from hcli.classes import IGNORE_INDEX
from hcli.spec import LossSpec

__all__ = ["focal_loss", "dice_loss", "SegLoss"]

_EPS = 1e-7


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Softmax focal loss over (N,C,H,W) logits and (N,H,W) labels (see the module docstring)."""
    logits = logits.float()
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    logp = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    alpha = weight.float()[safe] if weight is not None else torch.ones_like(logp)
    alpha = alpha * valid
    # The floor keeps pow's gradient finite where p rounds to 1 (gamma < 1 would give inf * 0).
    modulator = (1 - logp.exp()).clamp_min(_EPS).pow(gamma) if gamma else 1.0
    total = (alpha * modulator * -logp).sum()
    # An all-ignored batch gives 0 with the graph kept (so backward and DDP stay uniform).
    return total / alpha.sum().clamp_min(_EPS)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in `target` (see the module docstring)."""
    logits = logits.float()
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(torch.where(valid.squeeze(1), target, 0), num_classes)
    onehot = onehot.permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    truth = onehot.sum(dims)
    denom = probs.sum(dims) + truth
    dice = (2 * inter + _EPS) / (denom + _EPS)
    present = truth > 0
    if not present.any():
        return logits.sum() * 0.0
    return 1 - dice[present].mean()


class SegLoss(nn.Module):
    """The training loss of the multiclass job: forward(outputs, targets) → (total, parts).

    `outputs` is the model's dict ("fine", and "coarse"/"binary" when hierarchical); `targets`
    the dict of `jobs.hierarchy.derive_targets` (or just the fine mask when not hierarchical).
    total = fine + coarse_weight * coarse + binary_weight * binary; `parts` holds each head's
    loss and the fine head's dice/focal (or ce) terms, detached. `head_weights` (a curriculum
    stage's, jobs.curriculum) replaces those three weights; every head is then computed, a zero
    weight included, so each stage's step costs the same and keeps every head in the graph.
    """

    def __init__(
        self,
        loss_spec: LossSpec,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        hierarchical: bool = False,
        n_coarse: int | None = None,
    ) -> None:
        super().__init__()
        if hierarchical and n_coarse is None:
            raise ValueError("hierarchical SegLoss needs n_coarse (1 + number of groups)")
        self.spec = loss_spec
        self.hierarchical = hierarchical
        self.n_coarse = n_coarse
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w, persistent=False)

    def head_loss(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.spec
        if s.name == "ce":
            # Focal with gamma 0 *is* weighted cross-entropy, but unlike F.cross_entropy it gives
            # 0 rather than nan for a crop that is all Background (common in ARTeFACT).
            ce = focal_loss(logits, target, 0.0, weight)
            return ce, {"ce": ce}
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if s.dice_weight:
            parts["dice"] = dice_loss(logits, target)
            total = total + s.dice_weight * parts["dice"]
        if s.focal_weight:
            parts["focal"] = focal_loss(logits, target, s.focal_gamma, weight)
            total = total + s.focal_weight * parts["focal"]
        return total, parts

    def forward(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor] | torch.Tensor,
        head_weights: Mapping[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(targets, torch.Tensor):
            if self.hierarchical:
                raise ValueError("hierarchical SegLoss needs the targets of derive_targets()")
            targets = {"fine": targets}
        device = outputs["fine"].device.type
        with torch.autocast(device_type=device, enabled=False):
            weights = cast(torch.Tensor | None, self.class_weights)  # a registered buffer or None
            fine, fine_parts = self.head_loss(outputs["fine"], targets["fine"].long(), weights)
            parts = {"fine": fine.detach()}
            parts |= {f"fine_{k}": v.detach() for k, v in fine_parts.items()}
            total = fine if head_weights is None else head_weights["fine"] * fine
            if self.hierarchical:
                for head, w in (("coarse", self.spec.coarse_weight),
                                ("binary", self.spec.binary_weight)):
                    if head_weights is not None:
                        w = head_weights[head]
                    elif not w:
                        continue
                    loss, _ = self.head_loss(outputs[head], targets[head].long(), None)
                    parts[head] = loss.detach()
                    total = total + w * loss
        parts["total"] = total.detach()
        return total, parts
