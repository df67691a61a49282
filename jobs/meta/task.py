"""The meta kind: meta-learning over the domains of a fold's training set (docs/meta.md).

A task is one domain (a material, a content, or a material group): a support batch and a query
batch drawn from that domain's training images. Each domain is its own feed (`domain:<name>`),
so each domain's sampler position is saved and restored exactly. One micro-step of the engine is
one task (`train.accum_steps` = `meta.tasks_per_step`), its loss's gradient the algorithm's
meta-gradient (jobs.meta.maml); the engine's accumulation averages the tasks of an outer step.
With several ranks the outer step's tasks are split across them (`ddp_wrap = False`: the model
is differentiated through functional copies, so the engine averages gradients itself).

No leakage by construction: the feeds hold only the fold's training ids (never its held-out
domain, checked against `hcli.data.splits.held_out_ids` when the feeds are built), validation
for checkpoint selection and early stopping uses the fold's validation ids (held-out images of
the *training* domains, DomainBed's training-domain validation), and the held-out domain is
scored once, zero-shot, at the end. `meta.train_on: all` (the one-run-for-every-fold shortcut)
adds the held-out domain's images to meta-training; the spec refuses it unless
`meta.transductive: true`, and the results say so.

Prototype attention (`model.attention=prototypes`, docs/innovations.md): the prototypes are
k-means-initialised from the fold's training ids (never the held-out domain's, never validation
ids) when training starts, saved with the model, and meta-learned like any parameter. They adapt
in the inner loop when `meta.inner_params` includes them (`all`, `decoder`: they sit between the
decoder and the heads; not `heads`), and the auxiliary prototype loss is part of the support and
the query loss alike. Why: the inner loop is a rehearsal of the adapt kind's fine-tuning, which
by default adapts the same parameters (`adapt.params` follows `meta.inner_params`) with the same
loss; a domain's few images then pull the prototypes toward how damage looks in that domain
(prototypes computed from the support set, as in prototypical networks), and meta-training learns
prototypes from which that step helps. Left out of the inner loop they would be the one part of
the decoder side that adaptation moves but meta-training never rehearsed moving.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch

from hcli.classes import CLASS_NAMES
from hcli.data.manifest import load_manifest
from hcli.data.splits import get_fold, held_out_ids, load_material_groups
from hcli.data.stats import class_table, class_weights, rare_classes
from hcli.errors import DataError
from jobs.data import build_eval_dataset, build_train_loader
from jobs.engine import run_task
from jobs.hierarchy import fine_to_coarse_lut
from jobs.meta.maml import MetaLearner
from jobs.models.prototypes import (
    init_segmenter_prototypes,
    prototype_term,
    save_attention_figures,
)
from jobs.models.segmenter import Segmenter
from jobs.multiclass.evaluate import evaluate, save_samples
from jobs.multiclass.task import _TEST_KEYS
from jobs.segmentation import (
    build_criterion,
    build_model_and_init,
    init_transductive,
    test_results,
    to_device,
    transductive_line,
)
from jobs.task import Feed, Fetch, Task, TrainState

__all__ = ["MetaTask", "domain_of", "run", "task_plan"]

FEED_PREFIX = "domain:"


def domain_of(manifest: Any, domain: str, groups_file: Any = None) -> dict[str, str]:
    """Each sample id's domain: its material, its content, or its material's group."""
    if domain == "group":
        groups = load_material_groups(groups_file)
        group_of = {m: g for g, members in groups.items() for m in members}
        return {s.id: group_of[s.material] for s in manifest.samples}
    if domain not in ("material", "content"):
        raise ValueError(f"meta.domain={domain!r}: use material, content or group")
    return {s.id: getattr(s, domain) for s in manifest.samples}


def task_plan(domains: list[str], seed: int, step: int, per_rank: int, world_size: int,
              rank: int) -> list[str]:
    """The domains rank `rank` meta-trains on at outer step `step`: a pure function of its
    arguments, so a resumed run draws the same. The step's world_size × per_rank tasks are
    distinct domains as far as there are domains (shuffled passes over them, concatenated), and
    are dealt to the ranks in consecutive chunks."""
    rng = random.Random(f"{seed}:meta-tasks:{step}")
    need = per_rank * world_size
    plan: list[str] = []
    while len(plan) < need:
        order = list(domains)
        rng.shuffle(order)
        plan += order
    return plan[rank * per_rank:(rank + 1) * per_rank]


def _feed_seed(seed: int, name: str) -> int:
    # Distinct sampler and augmentation streams per domain (same-sized domains would otherwise
    # draw the same permutations and crops).
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little") >> 1


class MetaTask(Task):
    metric = "miou"
    mode = "max"
    ddp_wrap = False

    # -- data ----------------------------------------------------------------------------------

    def build_feeds(self) -> dict[str, Feed]:
        spec, env, meta = self.spec, self.env, self.spec.meta
        self.manifest = load_manifest(spec.data.root)
        self.fold = get_fold(self.manifest, spec.data, spec.seed)
        held = held_out_ids(self.manifest, spec.data, spec.seed)
        self.transductive = meta.train_on == "all"
        pool = list(self.fold.train)
        if self.transductive:
            pool += self.fold.test
        elif set(pool) & held:
            # get_fold never puts held-out ids in train; this guards the invariant itself.
            raise RuntimeError(f"fold {self.fold.name}: training ids include held-out ones")
        domain = domain_of(self.manifest, meta.domain, spec.data.groups_file)
        by_domain: dict[str, list[str]] = defaultdict(list)
        for sid in sorted(pool):
            by_domain[domain[sid]].append(sid)
        self.domain_ids = dict(sorted(by_domain.items()))
        if not self.domain_ids:
            raise DataError(f"fold {self.fold.name} has no training images to meta-train on")
        self.domains = list(self.domain_ids)
        self.train_ids = sorted(pool)
        self.rare = rare_classes(class_table(self.manifest, self.train_ids))
        self.weights = None
        if spec.loss.class_weights != "none":
            self.weights = class_weights(self.manifest, spec.loss.class_weights,
                                         clip=spec.loss.weight_clip, ids=self.train_ids)
        lut = fine_to_coarse_lut(spec.model.coarse_groups) if spec.model.hierarchical else None
        batch = spec.train.batch_size
        self.with_replacement: list[str] = []
        feeds: dict[str, Feed] = {}
        for name, ids in self.domain_ids.items():
            per_rank = -(-len(ids) // env.world_size)
            if per_rank < batch:
                # The sampler runs epoch after epoch, so a batch wraps into the next epoch's
                # permutation and repeats images: sampling with replacement.
                self.with_replacement.append(name)
                print(f"warning: domain {name!r} has {len(ids)} training image(s), fewer than "
                      f"a batch of {batch} per rank; its batches repeat images (sampled with "
                      "replacement)", flush=True)
            loader, sampler = build_train_loader(
                spec.model_copy(update={"seed": _feed_seed(spec.seed, name)}), self.manifest,
                ids, rank=env.rank, world_size=env.world_size,
                pin_memory=env.device.type == "cuda", target_lut=lut,
            )
            feeds[FEED_PREFIX + name] = Feed(loader, sampler)
        self.main_feed = FEED_PREFIX + self.domains[0]
        # Training-domain validation: never the test domain, even if the fold has no val ids
        # (the spec refuses data.val_fraction=0 for kind=meta).
        self.val_set = build_eval_dataset(spec, self.manifest, self.fold.val)
        self.test_set = build_eval_dataset(spec, self.manifest, self.fold.test)
        self.micro = 0  # tasks done by this rank: fixes the next task's domain
        self.tasks_seen: Counter[str] = Counter()
        self._support_losses: list[float] = []
        self._query_losses: list[float] = []
        self._proto_losses: list[torch.Tensor] = []
        return feeds

    def build_model(self) -> torch.nn.Module:
        spec = self.spec
        model = build_model_and_init(spec, self.manifest, self.fold.test, self.env.run_dir.parent)
        self.criterion = build_criterion(spec, self.weights, self.env.device)
        meta = spec.meta
        self.model = model
        self.learner = MetaLearner(
            model, self._loss, algorithm=meta.algorithm,
            inner_lr=meta.inner_lr, inner_steps=meta.inner_steps, inner_params=meta.inner_params,
            autocast=self.env.autocast,
        )
        return model

    def _loss(self, outputs: dict[str, torch.Tensor], targets: Any) -> torch.Tensor:
        """Support and query loss alike: the segmentation loss, plus prototype attention's
        auxiliary loss when the model has it (the inner loop then pulls the adapted prototypes
        toward the support images' pixels, as the adapt kind does at test time)."""
        loss = self.criterion(outputs, targets)[0]
        extra = prototype_term(self.model.attention, outputs, targets)
        if extra is None:
            return loss
        self._last_proto = extra.detach()
        return loss + self.spec.model.prototypes.loss_weight * extra

    def on_start(self, model: torch.nn.Module, resumed: bool) -> None:
        # k-means from the fold's training ids of the training domains only: never the held-out
        # domain, not even with meta.train_on=all (whose transductive use is meta-training), nor
        # the validation ids. A resumed run has its prototypes in the checkpoint.
        p = self.spec.model
        if not resumed and p.attention == "prototypes" and p.prototypes.init == "kmeans":
            assert isinstance(model, Segmenter)
            train_set = build_eval_dataset(self.spec, self.manifest, self.fold.train)
            init_segmenter_prototypes(model, train_set, self.spec.data.crop_size,
                                      self.env.device, self.env.autocast, self.spec.seed)

    def provenance(self) -> dict[str, Any]:
        init = self.spec.model.init_from
        return {"train_ids": self.train_ids, "val_ids": self.fold.val,
                "test_ids": self.fold.test, "init_from": [str(init)] if init else []}

    # -- one task ------------------------------------------------------------------------------

    def _batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        return to_device(batch, self.spec, self.env.device)

    def next_domain(self) -> str:
        per_rank = self.spec.train.accum_steps
        step, i = divmod(self.micro, per_rank)
        plan = task_plan(self.domains, self.spec.seed, step, per_rank, self.env.world_size,
                         self.env.rank)
        return plan[i]

    def micro_step(self, fetch: Fetch, forward: Callable[..., Any]) -> torch.Tensor:
        # `forward` (the engine's module, maybe compiled) is not used: the learner calls the
        # model functionally, with the adapted weights.
        name = self.next_domain()
        support = self._batch(fetch(FEED_PREFIX + name))
        query = self._batch(fetch(FEED_PREFIX + name))
        out = self.learner.task_loss(support, query)
        if self.model.attention is not None:
            self._proto_losses.append(self._last_proto)  # the query's (the last loss computed)
        self.micro += 1
        self.tasks_seen[name] += 1
        self._support_losses.append(out.support_losses[0])
        self._query_losses.append(out.query_loss)
        return out.loss

    def train_logs(self) -> dict[str, Any]:
        """Support loss before adaptation and query loss after it, since the last log."""
        logs: dict[str, Any] = {}
        if self._query_losses:
            logs = {"support_loss": sum(self._support_losses) / len(self._support_losses),
                    "query_loss": sum(self._query_losses) / len(self._query_losses)}
        if self._proto_losses:
            logs["prototype_loss"] = float(torch.stack(self._proto_losses).mean())
        self._support_losses, self._query_losses, self._proto_losses = [], [], []
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"micro": self.micro, "tasks_seen": dict(self.tasks_seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.micro = int(state["micro"])
        self.tasks_seen = Counter({k: int(v) for k, v in state["tasks_seen"].items()})

    # -- validation and results ----------------------------------------------------------------

    def _evaluate(self, model: torch.nn.Module, dataset: Any, **kw: Any) -> dict[str, Any]:
        return evaluate(model, dataset, self.spec, self.rare, self.env.device, self.env.autocast,
                        **kw)

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        m = self._evaluate(model, self.val_set)
        return {"miou": m["miou"] or 0.0,
                **{k: m[k] for k in ("binary_miou", "coarse_miou", "rare_miou", "per_class_iou")}}

    def finish(self, model: torch.nn.Module, state: TrainState) -> dict[str, Any]:
        """Zero-shot figures on the held-out domain, and the in-domain (training-domain val)
        mIoU of the same weights."""
        metrics = self._evaluate(model, self.test_set, all_clean_baseline=True)
        in_domain = self._evaluate(model, self.val_set)["miou"]
        samples = save_samples(model, self.test_set, self.spec,
                               self.env.run_dir / "figures" / "samples", self.env.device,
                               self.env.autocast, self.spec.train.overlays)
        if self.spec.model.attention == "prototypes":
            save_attention_figures(model, self.test_set, self.spec.data.crop_size,
                                   self.env.run_dir / "figures" / "prototypes", self.env.device,
                                   self.spec.train.overlays, list(CLASS_NAMES))
        meta = self.spec.meta
        self._record_transductive()
        init = init_transductive(self.env.run_dir)
        return {
            **test_results(self.spec, self.fold, metrics, samples, _TEST_KEYS),
            **init,
            "transductive": self.transductive or init["transductive"],
            "selected_on_test": False,  # validation: the training domains' own images
            "in_domain_miou": in_domain,
            "meta": {
                "algorithm": meta.algorithm,
                "domain": meta.domain,
                "domains": self.domains,
                "domain_sizes": {k: len(v) for k, v in self.domain_ids.items()},
                # This rank's tasks (rank 0 writes the results).
                "tasks_per_domain": {d: self.tasks_seen.get(d, 0) for d in self.domains},
                "with_replacement": self.with_replacement,
                "inner_steps": meta.inner_steps,
                "inner_lr": meta.inner_lr,
                "inner_params": meta.inner_params,
                "tasks_per_step": meta.tasks_per_step,
                "train_on": meta.train_on,
            },
        }

    def _record_transductive(self) -> None:
        from hcli.runs import Run
        from jobs.provenance import record_end

        record_end(Run(self.env.run_dir), transductive=self.transductive,
                   meta_domains=self.domains)

    def report(self, results: dict[str, Any]) -> None:
        loud = transductive_line(results)
        lines = [] if loud is None else [loud]
        if self.transductive:
            lines.append("TRANSDUCTIVE: the held-out domain was in meta-training "
                         "(meta.train_on=all); its score is not a generalisation score")
        lines += [
            f"held-out {results['held_out']} mIoU {results['miou']:.4f} zero-shot "
            f"({results['checkpoint']} checkpoint, step {results['step']}); "
            f"in-domain val mIoU {results['in_domain_miou']:.4f}; predicting Clean "
            f"everywhere: {results['baseline_all_clean_miou']:.4f}",
            f"meta: {results['meta']['algorithm']} over {len(results['meta']['domains'])} "
            f"{results['meta']['domain']} domain(s); tasks per domain "
            f"{results['meta']['tasks_per_domain']}",
        ]
        if results["meta"]["with_replacement"]:
            lines.append(f"sampled with replacement (fewer images than a batch): "
                         f"{results['meta']['with_replacement']}")
        print("\n".join(lines), flush=True)


run = functools.partial(run_task, task_cls=MetaTask)
