"""provenance.json and the init_from leakage guard that reads it: a chain A → B → C is checked
against everything A and B saw, also when A's folder is gone and A's data was no fold."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hcli.contract import Provenance
from hcli.errors import SpecError, UserError
from hcli.runs import Run, create_run
from hcli.spec import Spec, load_spec
from jobs.provenance import check_init_leakage, read_ids, record_end, record_start


def _spec(**flags: Any) -> Spec:
    return load_spec(flags={"train.steps": 10, "train.warmup_steps": 1, **flags})


def _run(root: Path, run_id: str, spec: Spec) -> Run:
    return create_run(root, run_id, spec, snapshot=False)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "manifest.json"
    path.parent.mkdir()
    path.write_text('{"samples": []}')
    return path


def _chain(root: Path, manifest: Path) -> tuple[Run, Run, Spec]:
    """A pretrains on unlabelled images u1..u3 and c-test-1 (not a fold of anything); B is
    initialised from A and trains on b1, b2; C is initialised from B."""
    a = _run(root, "mae-a", _spec())
    record_start(a, a.spec(), manifest_path=manifest, train_ids=["u1", "u2", "c-test-1", "u3"],
                 val_ids=[], init_from=[])
    b = _run(root, "multiclass-b", _spec(**{"model.init_from": "mae-a"}))
    record_start(b, b.spec(), manifest_path=manifest, train_ids=["b1", "b2"], val_ids=["bv"],
                 test_ids=["bt"], init_from=["mae-a"])
    c_spec = _spec(**{"model.init_from": "multiclass-b"})
    return a, b, c_spec


def test_chain_refused_at_c_naming_a(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "runs"
    _, _, c_spec = _chain(root, manifest)
    with pytest.raises(SpecError) as exc:
        check_init_leakage(c_spec, ["c-test-1", "c-test-2"], root)
    assert isinstance(exc.value, UserError) and exc.value.exit_code == 2
    msg = str(exc.value)
    assert "run mae-a (through multiclass-b) trained on 1 of this run's test images" in msg
    assert "c-test-1" in msg and "init_allow_test_overlap" in msg
    # Test images no run of the chain saw pass; so does an accepted overlap.
    check_init_leakage(c_spec, ["c-test-2"], root)
    allowed = _spec(**{"model.init_from": "multiclass-b", "model.init_allow_test_overlap": True})
    check_init_leakage(allowed, ["c-test-1"], root)


def test_validation_images_of_the_source_count(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "runs"
    _, _, c_spec = _chain(root, manifest)
    with pytest.raises(SpecError, match="run multiclass-b validated on 1 of this run's test"):
        check_init_leakage(c_spec, ["bv"], root)


def test_chain_is_kept_when_the_ancestor_is_deleted(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "runs"
    a, b, c_spec = _chain(root, manifest)
    shutil.rmtree(a.path)
    with pytest.raises(SpecError, match="mae-a"):
        check_init_leakage(c_spec, ["c-test-1"], root)


def test_record_start_contents(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "runs"
    _, b, _ = _chain(root, manifest)
    prov = Provenance.model_validate(json.loads((b.path / "provenance.json").read_text()))
    assert prov.run_id == "multiclass-b" and prov.init_from == ["mae-a"]
    assert prov.manifest_sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert {k: v.count for k, v in prov.samples.items()} == {"train": 2, "val": 1, "test": 1}
    assert read_ids(b.path, prov.samples["train"]) == {"b1", "b2"}
    seen = {(s.run_id, s.split): read_ids(b.path, s) for s in prov.seen}
    assert seen == {("multiclass-b", "train"): {"b1", "b2"}, ("multiclass-b", "val"): {"bv"},
                    ("mae-a", "train"): {"u1", "u2", "u3", "c-test-1"}, ("mae-a", "val"): set()}
    listed = (b.path / prov.samples["train"].file).read_text()
    assert listed == "b1\nb2\n"
    assert prov.samples["train"].sha256 == hashlib.sha256(listed.encode()).hexdigest()


def test_record_end_extends(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "runs"
    _, b, _ = _chain(root, manifest)
    before = Provenance.model_validate(json.loads((b.path / "provenance.json").read_text()))
    after = record_end(b, checkpoint="best", final_step=10)
    assert after.finished_at is not None and after.end == {"checkpoint": "best", "final_step": 10}
    assert after.samples == before.samples and after.seen == before.seen
    on_disk = json.loads((b.path / "provenance.json").read_text())
    assert on_disk["end"]["final_step"] == 10


def test_altered_list_is_refused(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "runs"
    _, b, c_spec = _chain(root, manifest)
    (b.path / "provenance" / "seen" / "mae-a-train.txt").write_text("u1\n")
    with pytest.raises(SpecError, match="does not match the sha256"):
        check_init_leakage(c_spec, ["c-test-1"], root)


def test_load_init_weights_uses_the_guard(tmp_path: Path, manifest: Path) -> None:
    torch = pytest.importorskip("torch")
    from jobs.init_from import load_init_weights

    root = tmp_path / "runs"
    _, b, c_spec = _chain(root, manifest)
    torch.save({"model": {"encoder.w": torch.zeros(1)}}, b.checkpoints / "best.pt")
    with pytest.raises(SpecError, match="mae-a"):
        load_init_weights(torch.nn.Linear(1, 1), c_spec, None, ["c-test-1"], root)  # type: ignore[arg-type]


def test_source_without_provenance_falls_back_to_its_fold(
    tmp_path: Path, synth_data: Path
) -> None:
    from hcli.data.manifest import load_manifest
    from hcli.data.splits import get_fold

    root = tmp_path / "runs"
    old = _spec(**{"data.root": str(synth_data), "data.fold": 0})
    _run(root, "multiclass-old", old)  # an older run: no provenance.json
    fold0 = get_fold(load_manifest(synth_data), old.data, old.seed)
    c_spec = _spec(**{"data.root": str(synth_data), "model.init_from": "multiclass-old"})
    with pytest.raises(SpecError, match="run multiclass-old trained on"):
        check_init_leakage(c_spec, [fold0.train[0]], root)
    check_init_leakage(c_spec, fold0.test, root)  # its own fold's test images: never trained on
