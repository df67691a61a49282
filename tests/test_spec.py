"""Spec validation at the CLI edge: every bad input is one line naming the key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hcli.cli import main
from hcli.spec import Spec, fill_defaults, load_spec, spec_from_yaml_file
from tests.conftest import run_cli


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0), capsys.readouterr().err


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_OVERRIDES = [
    (["-o", "train.foo=1"], "train.foo"),
    (["-o", "train.steps=abc"], "train.steps"),
    (["-o", "train.lr=-1"], "train.lr"),
    (["-o", "train.steps=0"], "train.steps"),
    (["-o", "train.batch_size=-4"], "train.batch_size"),
    (["-o", "model.backbone=convnxt"], "model.backbone"),
    (["-o", "data.crop_size=100"], "data.crop_size"),
    (["-o", "model.backbone=swin", "-o", "data.crop_size=32"], "data.crop_size"),
    (["-o", "train.lr"], "train.lr"),  # malformed: no '='
    (["-o", "=3"], "key.sub=value"),
    (["-o", "data.protocol=lopo"], "data.protocol"),
    (["-o", "data.fold=7"], "data.fold"),
    (["-o", "slurm.time_min=2"], "slurm.time_min"),
    (["-o", "model.backbone=maxvit", "-o", "train.batch_size=1"], "train.batch_size"),
    (["-o", "seed.x=1"], "seed"),
    (["-o", "model.coarse_groups={a: [Peel]}"], "model.coarse_groups"),
    (["-o", "train.amp=fp16", "-o", "train.device=cpu"], "train.amp"),
    (["-o", "data.scale_range=[2, 1]"], "data.scale_range"),
    (["-o", "train.amp=fp32"], "train.amp"),
    (["-o", "model.backbone=swin", "-o", "data.crop_size=256", "-o", "data.eval_window=512"],
     "data.eval_window"),
    (["-o", "model.decoder_norm=ln"], "model.decoder_norm"),
]


@pytest.mark.parametrize(("args", "key"), BAD_OVERRIDES, ids=[k for _, k in BAD_OVERRIDES])
def test_bad_override_is_one_line_exit_2(args, key, capsys):
    code, err = _cli(["spec", "show", *args], capsys)
    assert code == 2
    assert key in err
    assert "Traceback" not in err
    assert err.startswith("error: ")


BAD_FILES = [
    ("train: {steps: [1, 2\n", "broken YAML"),
    ("", "empty"),
    ("- a\n- b\n", "mapping"),
    ("kind: multiclass\nbogus: 1\n", "bogus"),
    ("model:\n  backbone: swin\n  widht: 3\n", "model.widht"),
    ("data: 5\n", "data"),
    ("train:\n  steps: 1.5\n", "train.steps"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_FILES, ids=[n for _, n in BAD_FILES])
def test_bad_config_file(text, needle, tmp_path, capsys):
    path = _write(tmp_path, text)
    code, err = _cli(["spec", "validate", path], capsys)
    assert code == 2
    assert needle in err
    assert path in err  # the message names the file
    assert "Traceback" not in err


def test_missing_config_file(capsys):
    code, err = _cli(["spec", "show", "no/such/file.yaml"], capsys)
    assert code == 2 and "no/such/file.yaml" in err and "quickstart" in err


def test_submit_unknown_and_unimplemented_kind(capsys, tmp_path, monkeypatch):
    code, err = _cli(["submit", "pretrain", "--dry-run", "--runs-dir", str(tmp_path)], capsys)
    assert code == 2 and "pretrain" in err
    # A kind declared in hcli/kinds without a workload yet (every shipped kind has one).
    import hcli.kinds

    monkeypatch.setattr(hcli.kinds, "implemented_kinds", lambda: ("probe", "multiclass"))
    code, err = _cli(["submit", "mae", "--local", "--runs-dir", str(tmp_path)], capsys)
    assert code == 2 and "mae" in err and "no job yet" in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_no_traceback_in_a_real_process_and_debug_shows_it():
    done = run_cli(["spec", "show", "-o", "train.lr=-1"], check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: spec: train.lr: Input should be greater than 0 (got -1)"
    ]
    debug = run_cli(["spec", "show", "-o", "train.lr=-1"], env={"HCLI_DEBUG": "1"}, check=False)
    assert "Traceback" in debug.stderr


def test_sources_combine_in_order(tmp_path):
    path = _write(tmp_path, "model: {backbone: maxvit}\ntrain: {lr: 0.5, steps: 100}\n")
    spec = load_spec(path, flags={"model.backbone": "swin"}, overrides=["train.lr=3e-4"])
    assert spec.model.backbone == "swin"  # CLI flag beats the file
    assert spec.train.lr == pytest.approx(3e-4)  # -o beats the file, typed by the schema
    assert spec.train.steps == 100  # the file beats the default
    assert spec.train.batch_size == 8  # the default


def test_overrides_typed_and_alias(tmp_path):
    spec = load_spec(
        overrides=[
            "train.seed=3",
            "data.scale_range=[0.25, 1]",
            "model.encoder_kwargs={depths: [1, 1]}",
            "train.clip_grad=null",
        ]
    )
    assert spec.seed == 3
    assert spec.data.scale_range == (0.25, 1.0)
    assert spec.model.encoder_kwargs == {"depths": [1, 1]}
    assert spec.train.clip_grad is None


def test_every_shipped_config_validates():
    from hcli.spec import CONFIGS_DIR
    from hcli.study import expand_study, load_study

    configs = sorted(CONFIGS_DIR.glob("*.yaml"))
    studies = [p for p in configs if p.stem.startswith("study_")]
    assert studies and len(configs) > len(studies)
    for path in configs:
        if path not in studies:
            load_spec(path)
    for path in studies:  # study files (docs/study.md): every stage's runs are valid specs
        study, _ = load_study(path)
        assert all(expand_study(study).values())


def test_schema_and_show():
    main_ok = run_cli(["spec", "schema"])
    assert '"additionalProperties": false' in main_ok.stdout
    shown = run_cli(["spec", "show", "--kind", "mae", "-o", "mae.mask_ratio=0.75"])
    assert "mask_ratio: 0.75" in shown.stdout and shown.stdout.startswith("# run id: mae-")


def test_an_older_spec_yaml_lacking_newer_fields_loads_with_their_defaults(tmp_path):
    written = load_spec("quickstart")
    old = written.model_dump(mode="json")
    del old["model"]["decoder_norm"], old["data"]["eval_window"], old["meta"]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(old))
    assert spec_from_yaml_file(path) == written


def test_fill_defaults_completes_a_raw_tree_without_validating_it():
    old = {
        "kind": "multiclass",
        "model": {"encoder_kwargs": {"depths": [1, 1]}, "gone_key": 3},
        "train": {"steps": 7},
        "data": "not a section",
    }
    full = fill_defaults(old)
    default = Spec().model_dump(mode="json")
    assert full["train"] == {**default["train"], "steps": 7}
    assert full["model"]["decoder_norm"] == "bn" and full["model"]["gone_key"] == 3
    assert full["model"]["encoder_kwargs"] == {"depths": [1, 1]}  # a value, not merged
    assert full["data"] == "not a section" and full["slurm"] == default["slurm"]
    assert full["model"]["coarse_groups"] == default["model"]["coarse_groups"]
    assert old["train"] == {"steps": 7}  # the input is left alone
