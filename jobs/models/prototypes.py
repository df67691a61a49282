"""Damage-prototype attention: a few learnable prototypes per class that decoder pixels attend to.

Damage is multimodal (a crack on canvas and on paper look nothing alike), so each class keeps
`per_class` prototypes in a `dim`-dimensional embedding space. Every decoder pixel is embedded
(1x1 conv, L2-normalised), compared to every prototype by cosine similarity / temperature, and the
softmax over all prototypes weights a value projection of the prototypes that is added to the
pixel's features (a residual cross-attention, zero at initialisation so training starts from the
plain model). The same similarities give the auxiliary loss: each pixel's class logit is the
log-sum-exp over that class's prototypes, and cross-entropy over classes pulls the pixel to its
class's prototypes and away from the others' (ProtoSeg, Zhou et al. 2022, "Rethinking Semantic
Segmentation: A Prototype View"; prototype memory as in Snell et al. 2017).

Initialisation (`init_prototypes_kmeans`): spherical k-means over the embeddings of training
pixels of each class, from the fold's training ids only (the caller passes them); a class with no
training pixel keeps its random prototypes and the caller is told which. The segmentation kinds
(multiclass, meta, adapt) share `init_segmenter_prototypes` and `prototype_term`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hcli.classes import CLASS_NAMES, IGNORE_INDEX

__all__ = ["PrototypeAttention", "init_prototypes_kmeans", "init_segmenter_prototypes",
           "prototype_loss", "prototype_term", "spherical_kmeans"]

# Training images whose pixels seed the k-means (a sample: it runs once, at step 0).
INIT_IMAGES = 64


class PrototypeAttention(nn.Module):
    """forward(feat (N,C,h,w)) → (feat + attended prototypes, similarities (N,K*P,h,w))."""

    def __init__(self, channels: int, num_classes: int, per_class: int, dim: int,
                 temperature: float) -> None:
        super().__init__()
        self.num_classes, self.per_class, self.temperature = num_classes, per_class, temperature
        self.embed = nn.Conv2d(channels, dim, 1)
        protos = torch.randn(num_classes * per_class, dim)
        self.prototypes = nn.Parameter(F.normalize(protos, dim=1))
        self.value = nn.Linear(dim, channels)
        # Zero residual at the start: the heads first see exactly the decoder's features.
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def embeddings(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(feat), dim=1)

    def similarities(self, emb: torch.Tensor) -> torch.Tensor:
        protos = F.normalize(self.prototypes, dim=1)
        return torch.einsum("nchw,kc->nkhw", emb, protos) / self.temperature

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sims = self.similarities(self.embeddings(feat))
        attn = sims.softmax(dim=1)
        values = self.value(F.normalize(self.prototypes, dim=1))  # (K*P, C)
        return feat + torch.einsum("nkhw,kc->nchw", attn, values), sims

    def class_attention(self, sims: torch.Tensor) -> torch.Tensor:
        """Attention mass per class (N,K,h,w): the softmax summed over each class's prototypes."""
        attn = sims.softmax(dim=1)
        n, _, h, w = attn.shape
        return attn.view(n, self.num_classes, self.per_class, h, w).sum(2)

    def class_logits(self, sims: torch.Tensor) -> torch.Tensor:
        n, _, h, w = sims.shape
        return sims.float().view(n, self.num_classes, self.per_class, h, w).logsumexp(2)


def prototype_loss(module: PrototypeAttention, sims: torch.Tensor,
                   target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each pixel's class (log-sum-exp over its prototypes) at feature scale."""
    small = F.interpolate(target[:, None].float(), size=sims.shape[-2:], mode="nearest")
    small = small[:, 0].long()
    logits = module.class_logits(sims)
    valid = small != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0  # graph kept: backward and DDP stay uniform
    return F.cross_entropy(logits, small, ignore_index=IGNORE_INDEX)


def prototype_term(attention: PrototypeAttention | None, outputs: dict[str, torch.Tensor],
                   targets: Any) -> torch.Tensor | None:
    """The auxiliary loss of a training forward's outputs, or None for a model without
    prototypes. Reads only the module's shape (class and prototype counts), so it also serves
    a functional call with other weights (the meta inner loop)."""
    sims = outputs.get("prototype_sims")
    if attention is None or sims is None:
        return None
    fine = targets["fine"] if isinstance(targets, dict) else targets
    return prototype_loss(attention, sims, fine)


def spherical_kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """k unit centres of unit vectors x (n,d), n >= 1; centres repeat points when n < k."""
    idx = torch.randperm(x.shape[0], generator=gen)
    centres = x[idx[torch.arange(k) % x.shape[0]]].clone()
    for _ in range(iters):
        assign = (x @ centres.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = F.normalize(members.mean(0), dim=0)
    return centres


@torch.no_grad()
def init_prototypes_kmeans(
    module: PrototypeAttention,
    features: Any,
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    seed: int,
    max_per_class: int = 4000,
    iters: int = 10,
) -> list[int]:
    """Set each class's prototypes to k-means centres of its pixels' embeddings.

    `features(image (1,3,H,W)) → decoder features (1,C,h,w)`; `samples` yields (image, mask) of
    training images only. Returns the classes that had no pixel (their prototypes stay random).
    """
    gen = torch.Generator().manual_seed(seed)
    pools: list[list[torch.Tensor]] = [[] for _ in range(module.num_classes)]
    for image, mask in samples:
        emb = module.embeddings(features(image))[0].float().cpu()  # (D,h,w)
        small = F.interpolate(mask[None, None].float(), size=emb.shape[-2:], mode="nearest")
        small = small[0, 0].long().flatten()
        flat = emb.flatten(1).T
        for c in small.unique().tolist():
            if 0 <= c < module.num_classes:
                pools[c].append(flat[small == c])
    empty = []
    protos = module.prototypes.data
    for c, pool in enumerate(pools):
        if not pool:
            empty.append(c)
            continue
        x = torch.cat(pool)
        if len(x) > max_per_class:
            x = x[torch.randperm(len(x), generator=gen)[:max_per_class]]
        centres = spherical_kmeans(x, module.per_class, iters, gen)
        protos[c * module.per_class:(c + 1) * module.per_class] = centres.to(protos)
    return empty


def init_segmenter_prototypes(model: Any, train_set: Any, size: int, device: torch.device,
                              autocast: Callable[[], Any], seed: int) -> list[str]:
    """k-means of a segmenter's prototypes over the decoder features of up to `INIT_IMAGES`
    images of `train_set` (which the caller builds from training ids only). Warns about, and
    returns, the classes that had no pixel there (their prototypes stay random)."""
    assert model.attention is not None
    was_training = model.training
    model.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    samples = ((img.to(device), mask) for img, mask in
               resized_samples(train_set, size, INIT_IMAGES, gen))
    with autocast():
        empty = init_prototypes_kmeans(
            model.attention, lambda x: model.decoder(model.encoder(x)), samples, seed=seed)
    model.train(was_training)
    names = [CLASS_NAMES[c] for c in empty]
    if names:
        warnings.warn(f"prototypes of {names} stay random: no training pixel of theirs in this "
                      "fold", stacklevel=2)
    return names


def resized_samples(dataset: Any, size: int, max_images: int,
                    gen: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(image (1,3,s,s), mask (s,s)) of up to `max_images` items of `dataset`, resized to the
    training crop side (an encoder built for one input side takes nothing else)."""
    order = torch.randperm(len(dataset), generator=gen)[:max_images].tolist()
    for i in sorted(order):
        item = dataset[i]
        image = F.interpolate(item["image"][None], size=(size, size), mode="bilinear",
                              align_corners=False)
        mask = F.interpolate(item["mask"][None, None].float(), size=(size, size), mode="nearest")
        yield image, mask[0, 0].long()


@torch.no_grad()
def save_attention_figures(model: Any, dataset: Any, size: int, out_dir: Any, device: Any,
                           count: int, class_names: list[str]) -> list[str]:
    """figures/prototypes/<id>_attention.png: the image and each class's attention mass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jobs.multiclass.evaluate import _to_uint8

    was_training = model.training
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(count, len(dataset))):
        item = dataset[i]
        image = F.interpolate(item["image"][None], size=(size, size), mode="bilinear",
                              align_corners=False)
        maps = model.prototype_attention(image.to(device))[0].float().cpu()  # (K,h,w)
        cols, vmax = 6, float(maps.max())  # one scale for every class: masses compare
        rows = -(-(len(maps) + 1) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows))
        axes = axes.ravel()
        axes[0].imshow(_to_uint8(image[0]))
        axes[0].set_title(str(item["id"]), fontsize=7)
        for k, m in enumerate(maps):
            axes[k + 1].imshow(m.numpy(), vmin=0, vmax=vmax, cmap="magma")
            axes[k + 1].set_title(class_names[k], fontsize=7)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out_dir / f"{item['id']}_attention.png", dpi=80)
        plt.close(fig)
        written.append(str(item["id"]))
    model.train(was_training)
    return written
