"""Meta-learning updates on `torch.func.functional_call`: first-order MAML, Reptile, MAML.

One task (a support batch and a query batch from one domain) becomes one loss tensor whose
gradient with respect to the meta-model's parameters is the algorithm's meta-gradient, so the
training engine's ordinary `backward()`, accumulation over `train.accum_steps` tasks, gradient
averaging across ranks, clipping and optimizer step make the outer update unchanged.

With θ the meta-parameters, φ ⊂ θ the ones the inner loop adapts (`inner_params`), α the inner
learning rate and K the inner steps, the inner loop is K SGD steps on the support loss L_S:
φ_0 = φ, φ_{k+1} = φ_k − α ∇_φ L_S(φ_k), always on the same support batch; the query loss is
L_Q(φ_K) with the parameters outside φ at their meta values.

- `fomaml` (first-order MAML, Finn et al. 2017 §5.2): g = ∇ L_Q evaluated at φ_K, applied to φ
  as if dφ_K/dφ were the identity; parameters outside φ get their ordinary ∇ L_Q. The query
  forward uses the straight-through value `p + (φ_K − p).detach()`, whose value is φ_K and whose
  derivative with respect to p is 1. Cost: K + 1 forward/backward passes.
- `reptile` (Nichol et al. 2018): g = (θ − φ_K) / (α K) on φ and 0 elsewhere. Dividing by α K
  gives the update the scale of a gradient whatever α and K are (with K = 1 it is exactly
  ∇ L_S(θ), an ERM gradient on the support batch), so the outer learning rate means the same as
  for ERM. The returned loss is `L_Q(φ_K).detach() + Σ p·g − (Σ p·g).detach()`: its value is the
  query loss at the adapted weights (computed without a graph, for the logs) and its gradient g.
- `maml` (second-order): the inner gradients keep their graph (`create_graph=True`) and the
  inner loop runs on the meta-parameters themselves, so backward differentiates through the
  unrolled loop (Hessian-vector products; memory grows with K). For small models.

BatchNorm running statistics. In training mode BatchNorm normalises with the batch's own
statistics, so its running mean and variance never change a training forward or its gradient;
they matter only for evaluation. Inner-loop forwards run with *copies* of the model's buffers
(passed to `functional_call`), which BatchNorm updates in place and which are dropped with the
task: an inner step never writes the meta-model's buffers, whatever the algorithm and however
many steps (tests/test_meta.py). The query forward, which is the meta-model's training forward,
uses the meta-model's own buffers, so its running statistics follow the query batches of every
domain (the activations of the adapted weights, which differ from the meta-weights' by K small
steps) exactly as an ERM step's follow its batch. Without that, a meta-trained BatchNorm
model (MaxViT's MBConv blocks, a `bn` decoder) would be evaluated with its initial statistics.
DomainBed's MLDG instead deep-copies the network per task and never updates the original's
statistics, which its ResNet can afford because it freezes BatchNorm (`freeze_bn`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["Algorithm", "InnerParams", "MetaLearner", "TaskOutcome", "inner_param_names"]

Algorithm = Literal["fomaml", "reptile", "maml"]
InnerParams = Literal["all", "decoder", "heads"]
Batch = tuple[torch.Tensor, Any]  # (inputs, targets)
LossFn = Callable[[Any, Any], torch.Tensor]


def inner_param_names(model: nn.Module, which: str) -> list[str]:
    """The trainable parameters the inner loop adapts: every one, all outside the encoder
    (decoder and heads), or the heads alone. Names as in `model.named_parameters()`."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if which == "all":
        chosen = names
    elif which == "decoder":
        chosen = [n for n in names if not n.startswith("encoder.")]
    elif which == "heads":
        chosen = [n for n in names if n.startswith("heads.")]
    else:
        raise ValueError(f"inner_params={which!r}: use all, decoder or heads")
    if not chosen:
        raise ValueError(f"inner_params={which!r} selects no parameter of {type(model).__name__}")
    return chosen


@dataclass
class TaskOutcome:
    """One task's loss for the engine to backpropagate, and figures for the logs."""

    loss: torch.Tensor
    query_loss: float
    support_losses: list[float] = field(default_factory=list)


class MetaLearner:
    """The inner loop and the per-task meta-objective of one model.

    `loss_fn(outputs, targets)` returns a scalar; `autocast()` wraps every forward (the inner
    gradients are not loss-scaled: prefer bf16 to fp16 for meta runs).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        algorithm: Algorithm = "fomaml",
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        inner_params: InnerParams | Iterable[str] = "all",
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        if algorithm not in ("fomaml", "reptile", "maml"):
            raise ValueError(f"algorithm={algorithm!r}: use fomaml, reptile or maml")
        if inner_steps < 1 or inner_lr <= 0:
            raise ValueError("inner_steps must be >= 1 and inner_lr > 0")
        self.model, self.loss_fn, self.autocast = model, loss_fn, autocast
        self.algorithm: Algorithm = algorithm
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.inner_names = (
            inner_param_names(model, inner_params) if isinstance(inner_params, str)
            else list(inner_params)
        )

    # -- pieces --------------------------------------------------------------------------------

    def _forward(self, tensors: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> Any:
        with self.autocast():
            return functional_call(self.model, dict(tensors), (inputs,), strict=False)

    def _loss(self, tensors: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        inputs, targets = batch
        outputs = self._forward(tensors, inputs)
        return self.loss_fn(outputs, targets)

    def adapt(self, support: Batch) -> tuple[dict[str, torch.Tensor], list[float]]:
        """The inner loop: the adapted φ_K (by name) and the support loss before each step.

        Second-order (`maml`) keeps the graph from the meta-parameters through every step;
        otherwise φ_K is a detached tensor. Never writes the meta-model's parameters or buffers.
        """
        params: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        second_order = self.algorithm == "maml"
        # Copies of every buffer: BatchNorm's in-place running-statistics update lands in them.
        buffers = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        fast: dict[str, torch.Tensor]
        if second_order:
            fast = {n: params[n] for n in self.inner_names}
            fixed = {n: p for n, p in params.items() if n not in fast}
        else:
            fast = {n: params[n].detach().requires_grad_(True) for n in self.inner_names}
            fixed = {n: p.detach() for n, p in params.items() if n not in fast}
        losses = []
        with torch.enable_grad():
            for _ in range(self.inner_steps):
                loss = self._loss({**fixed, **buffers, **fast}, support)
                losses.append(float(loss.detach()))
                grads = torch.autograd.grad(loss, list(fast.values()),
                                            create_graph=second_order, allow_unused=True)
                stepped: dict[str, torch.Tensor] = {}
                for (name, w), g in zip(fast.items(), grads, strict=True):
                    new = w if g is None else w - self.inner_lr * g
                    stepped[name] = new if second_order else new.detach().requires_grad_(True)
                fast = stepped
        if not second_order:
            fast = {n: w.detach() for n, w in fast.items()}
        return fast, losses

    # -- one task ------------------------------------------------------------------------------

    def task_loss(self, support: Batch, query: Batch) -> TaskOutcome:
        """The loss whose gradient w.r.t. the meta-parameters is this task's meta-gradient."""
        adapted, support_losses = self.adapt(support)
        params: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        if self.algorithm == "reptile":
            with torch.no_grad():
                query_value = self._loss(adapted, query)
            scale = 1.0 / (self.inner_lr * self.inner_steps)
            surrogate = sum(
                ((params[n] * ((params[n].detach() - adapted[n]) * scale)).sum()
                 for n in self.inner_names),
                torch.zeros((), device=query_value.device),
            )
            loss = query_value.detach().float() + surrogate - surrogate.detach()
            return TaskOutcome(loss, float(query_value), support_losses)
        if self.algorithm == "fomaml":
            # Value φ_K, derivative 1 w.r.t. p: the query gradient at φ_K lands on p.
            at = {n: params[n] + (adapted[n] - params[n]).detach() for n in self.inner_names}
        else:
            at = adapted
        # Parameters outside φ and every buffer are the meta-model's own (see module docstring).
        loss = self._loss(at, query)
        return TaskOutcome(loss, float(loss.detach()), support_losses)
