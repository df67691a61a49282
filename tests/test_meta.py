"""Meta-learning: the updates against hand-computed ones, the inner loop's isolation, leakage
over every protocol and fold, the transductive refusal, and a meta run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hcli.data.manifest import load_manifest
from hcli.data.splits import get_fold, held_out_ids, make_splits
from hcli.spec import Spec
from jobs.meta.maml import MetaLearner, inner_param_names
from jobs.meta.task import domain_of, task_plan
from tests.conftest import run_cli, tiny_overrides

# -- a tiny linear model: y = w·x + b, loss = mean squared error -----------------------------

ALPHA, K = 0.1, 2


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return model


def _data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    xs, xq = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    ys, yq = torch.randn(4, 1, generator=g), torch.randn(5, 1, generator=g)
    return (xs, ys), (xq, yq)


def _grad_by_hand(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """d/dw, d/db of mean((x·w + b − y)²), written out: (2/n) xᵀ r and (2/n) Σ r."""
    r = x @ w.T + b - y  # (n, 1)
    n = x.shape[0]
    return (2.0 / n) * (r.T @ x), (2.0 / n) * r.sum(0)


def _inner_by_hand(w, b, support):
    x, y = support
    for _ in range(K):
        gw, gb = _grad_by_hand(w, b, x, y)
        w, b = w - ALPHA * gw, b - ALPHA * gb
    return w, b


def _meta_grads(algorithm: str, model: nn.Module, support, query) -> dict[str, torch.Tensor]:
    learner = MetaLearner(model, _mse, algorithm=algorithm, inner_lr=ALPHA, inner_steps=K)
    model.zero_grad()
    learner.task_loss(support, query).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_first_order_maml_gradient_is_the_query_gradient_at_the_adapted_weights():
    model = _linear()
    support, query = _data()
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    w_k, b_k = _inner_by_hand(w0, b0, support)
    expect_w, expect_b = _grad_by_hand(w_k, b_k, *query)
    got = _meta_grads("fomaml", model, support, query)
    torch.testing.assert_close(got["weight"], expect_w)
    torch.testing.assert_close(got["bias"], expect_b)
    # ...and it is not the plain query gradient at the meta-weights (the inner loop mattered).
    plain_w, _ = _grad_by_hand(w0, b0, *query)
    assert not torch.allclose(got["weight"], plain_w, atol=1e-4)


def test_reptile_gradient_is_the_scaled_difference_to_the_adapted_weights():
    model = _linear()
    support, query = _data()
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    w_k, b_k = _inner_by_hand(w0, b0, support)
    got = _meta_grads("reptile", model, support, query)
    torch.testing.assert_close(got["weight"], (w0 - w_k) / (ALPHA * K))
    torch.testing.assert_close(got["bias"], (b0 - b_k) / (ALPHA * K))


def test_reptile_loss_value_is_the_query_loss_at_the_adapted_weights():
    model = _linear()
    support, query = _data()
    w_k, b_k = _inner_by_hand(model.weight.detach(), model.bias.detach(), support)
    out = MetaLearner(model, _mse, algorithm="reptile", inner_lr=ALPHA,
                      inner_steps=K).task_loss(support, query)
    expect = _mse(query[0] @ w_k.T + b_k, query[1])
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_second_order_maml_equals_autograd_through_the_unrolled_loop():
    model = _linear()
    support, query = _data()
    w = model.weight.detach().clone().requires_grad_(True)
    b = model.bias.detach().clone().requires_grad_(True)
    fw, fb = w, b
    for _ in range(K):
        loss = _mse(support[0] @ fw.T + fb, support[1])
        gw, gb = torch.autograd.grad(loss, (fw, fb), create_graph=True)
        fw, fb = fw - ALPHA * gw, fb - ALPHA * gb
    expect_w, expect_b = torch.autograd.grad(_mse(query[0] @ fw.T + fb, query[1]), (w, b))
    got = _meta_grads("maml", model, support, query)
    torch.testing.assert_close(got["weight"], expect_w)
    torch.testing.assert_close(got["bias"], expect_b)
    # The second-order term is there: first-order differs.
    assert not torch.allclose(_meta_grads("fomaml", _linear(), support, query)["weight"],
                              expect_w, atol=1e-6)


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.decoder = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.heads = nn.ModuleDict({"fine": nn.Conv2d(4, 2, 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads["fine"](self.decoder(self.encoder(x)))


def _seg_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def _seg_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g) * 3 + 1, torch.randint(0, 2, (2, 8, 8),
                                                                        generator=g)


@pytest.mark.parametrize("algorithm", ["fomaml", "reptile", "maml"])
def test_inner_loop_leaves_parameters_and_batchnorm_buffers_untouched(algorithm):
    torch.manual_seed(0)
    model = _BNNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = MetaLearner(model, _seg_loss, algorithm=algorithm, inner_lr=0.5, inner_steps=3)
    adapted, losses = learner.adapt(_seg_batch(0))
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # The inner loop did run: the adapted weights moved, and BN saw batches (in its copies).
    assert any(not torch.equal(adapted[n], before[n]) for n in adapted)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(p.grad is None for p in model.parameters())


def test_query_forward_updates_the_meta_models_running_statistics_once():
    torch.manual_seed(0)
    model = _BNNet().train()
    learner = MetaLearner(model, _seg_loss, inner_lr=0.5, inner_steps=3)
    learner.task_loss(_seg_batch(0), _seg_batch(1))
    # Three inner steps on copies, one query forward on the model's own buffers.
    assert int(model.encoder[1].num_batches_tracked) == 1
    assert not torch.equal(model.encoder[1].running_mean, torch.zeros(4))


@pytest.mark.parametrize(("which", "prefixes"), [
    ("all", ("encoder.", "decoder.", "heads.")), ("decoder", ("decoder.", "heads.")),
    ("heads", ("heads.",)),
])
def test_inner_params_selects_by_part(which, prefixes):
    names = inner_param_names(_BNNet(), which)
    assert names and {n.split(".")[0] + "." for n in names} == set(prefixes)


def test_fomaml_on_heads_leaves_the_rest_unadapted_but_still_trained():
    torch.manual_seed(0)
    model = _BNNet().train()
    learner = MetaLearner(model, _seg_loss, inner_lr=0.5, inner_steps=2, inner_params="heads")
    adapted, _ = learner.adapt(_seg_batch(0))
    assert set(adapted) == {"heads.fine.weight", "heads.fine.bias"}
    learner.task_loss(_seg_batch(0), _seg_batch(1)).loss.backward()
    assert model.encoder[0].weight.grad is not None  # the outer step trains the encoder too


def test_task_plan_is_deterministic_distinct_and_split_across_ranks():
    domains = ["a", "b", "c", "d", "e"]
    ranks = [task_plan(domains, 3, 7, 2, 2, r) for r in range(2)]
    assert ranks == [task_plan(domains, 3, 7, 2, 2, r) for r in range(2)]
    together = ranks[0] + ranks[1]
    assert len(set(together)) == 4  # distinct while there are enough domains
    assert task_plan(domains, 3, 8, 2, 2, 0) != ranks[0] or task_plan(domains, 3, 9, 2, 2, 0) \
        != ranks[0]
    assert len(task_plan(["a", "b"], 0, 0, 3, 1, 0)) == 3  # more tasks than domains: repeats


# -- leakage over every protocol and fold ----------------------------------------------------


def _cases(data: Path) -> list[tuple[str, int, str]]:
    manifest = load_manifest(data)
    out = []
    for protocol in ("lomo", "lomo-grouped", "locontent", "kfold"):
        for fold in make_splits(manifest, protocol, k=3):
            for domain in ("material", "content", "group"):
                out.append((protocol, fold.index, domain))
    return out


def test_no_held_out_id_in_any_meta_training_feed(synth_data, tmp_path, monkeypatch):
    """Builds the real feeds of every protocol × fold × task domain and checks each id."""
    from jobs.meta.task import FEED_PREFIX, MetaTask
    from jobs.task import Env

    manifest = load_manifest(synth_data)
    checked = 0
    for protocol, fold, domain in _cases(synth_data):
        spec = Spec.model_validate({
            "kind": "meta", "data": {"root": str(synth_data), "protocol": protocol, "fold": fold,
                                     "k": 3, "num_workers": 0, "crop_size": 64},
            "meta": {"domain": domain}, "train": {"batch_size": 2, "device": "cpu"},
        })
        fold_ = get_fold(manifest, spec.data, spec.seed)
        if not fold_.feasible:
            continue
        task = MetaTask(Env(spec, torch.device("cpu"), 0, 1, tmp_path, "r", lambda: None))
        feeds = task.build_feeds()
        held = held_out_ids(manifest, spec.data, spec.seed)
        fed = set()
        for name, feed in feeds.items():
            ids = {e.id for e in feed.loader.dataset.entries}
            assert name.startswith(FEED_PREFIX)
            assert not ids & held, (protocol, fold, domain, name)
            assert not ids & set(fold_.val), "validation images are not trained on"
            fed |= ids
        assert fed == set(fold_.train)
        assert set(task.provenance()["train_ids"]) == fed
        assert not {e.id for e in task.val_set.entries} & held, "val is never the test domain"
        checked += 1
    assert checked >= 20


def test_train_on_all_is_refused_unless_transductive(synth_data, tmp_path):
    from jobs.meta.task import MetaTask
    from jobs.task import Env

    base = {"kind": "meta", "data": {"root": str(synth_data), "protocol": "lomo", "fold": 0,
                                     "num_workers": 0, "crop_size": 64},
            "train": {"batch_size": 2, "device": "cpu"}}
    with pytest.raises(ValidationError, match="meta.transductive=true"):
        Spec.model_validate({**base, "meta": {"train_on": "all"}})
    spec = Spec.model_validate({**base, "meta": {"train_on": "all", "transductive": True}})
    task = MetaTask(Env(spec, torch.device("cpu"), 0, 1, tmp_path, "r", lambda: None))
    task.build_feeds()
    manifest = load_manifest(synth_data)
    held = held_out_ids(manifest, spec.data, spec.seed)
    assert task.transductive and held <= set(task.provenance()["train_ids"])


def test_refusals_are_one_line_at_the_cli(synth_data, tmp_path):
    for extra, needle in [
        ("meta.train_on=all", "meta.transductive=true"),
        ("train.accum_steps=3", "train.accum_steps=3 but meta.tasks_per_step"),
        ("data.val_fraction=0", "data.val_fraction=0 with kind=meta"),
        ("model.grad_checkpointing=true", "model.grad_checkpointing=true with kind=meta"),
    ]:
        res = run_cli(["submit", "meta", "--dry-run", "--runs-dir", str(tmp_path),
                       *tiny_overrides(synth_data, extra)], check=False)
        assert res.returncode == 2, res.stderr
        assert needle in res.stderr and "Traceback" not in res.stderr


def test_accum_steps_follows_tasks_per_step():
    assert Spec.model_validate({"kind": "meta", "meta": {"tasks_per_step": 3}}
                               ).train.accum_steps == 3
    assert Spec.model_validate({"kind": "multiclass", "meta": {"tasks_per_step": 3}}
                               ).train.accum_steps == 1


def test_group_domains_follow_the_groups_file(synth_data):
    manifest = load_manifest(synth_data)
    groups = domain_of(manifest, "group")
    assert {groups[s.id] for s in manifest.samples if s.material == "Paper"} == {"paper-like"}


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_meta_run_writes_zero_shot_results_and_provenance(synth_data, tmp_path):
    runs = tmp_path / "runs"
    run_cli(["submit", "meta", "--foreground", "--runs-dir", str(runs),
             *tiny_overrides(synth_data, "data.protocol=lomo", "data.fold=3",
                             "meta.tasks_per_step=2", "meta.inner_steps=2", "train.steps=4",
                             "train.val_every_steps=2")])
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    results = json.loads((run / "results.json").read_text())
    manifest = load_manifest(synth_data)
    spec = Spec.model_validate({"data": {"root": str(synth_data), "protocol": "lomo",
                                         "fold": 3, "k": 3}})
    fold = get_fold(manifest, spec.data, 0)
    assert results["kind"] == "meta" and results["held_out"] == fold.held_out
    assert results["transductive"] is False and results["in_domain_miou"] is not None
    assert fold.held_out not in results["meta"]["domains"]
    assert sum(results["meta"]["tasks_per_domain"].values()) == 4 * 2
    train = set((run / "provenance" / "train.txt").read_text().split())
    assert train == set(fold.train) and not train & set(fold.test)
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["end"]["transductive"] is False
