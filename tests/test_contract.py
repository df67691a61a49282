"""The run-folder contract: models, the key names status uses, docs/run-folder.md, and the
writers (state.json bookkeeping, metrics lines, results.json compute over every execution)."""

from __future__ import annotations

import ast
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hcli import contract_keys
from hcli.contract import (
    EventLine,
    Hardware,
    JobRecord,
    MulticlassResults,
    Progress,
    Provenance,
    Requeue,
    State,
    TrainLine,
    ValLine,
    compute_from_state,
    dump,
    parse_metrics_line,
    require_complete,
)
from hcli.runs import Run, create_run
from hcli.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "run-folder.md"


# -- key names for status --------------------------------------------------------------------


@pytest.mark.parametrize(("keys", "model"), [
    (contract_keys.STATE_KEYS, State),
    (contract_keys.JOB_KEYS, JobRecord),
    (contract_keys.HARDWARE_KEYS, Hardware),
    (contract_keys.REQUEUE_KEYS, Requeue),
    (contract_keys.PROGRESS_KEYS, Progress),
])
def test_key_constants_are_the_model_fields(keys: tuple[str, ...], model: type[BaseModel]) -> None:
    assert list(keys) == list(model.model_fields)


def _keys_read(path: Path, receivers: set[str]) -> set[str]:
    """String keys read as `<receiver>.get("key")` or `<receiver>["key"]` in a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        target, key = None, None
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and node.args):
            target, key = node.func.value, node.args[0]
        elif isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        if (isinstance(target, ast.Name) and target.id in receivers
                and isinstance(key, ast.Constant) and isinstance(key.value, str)):
            found.add(key.value)
    return found


@pytest.mark.parametrize(("receivers", "keys"), [
    ({"st", "state"}, contract_keys.STATE_KEYS),
    ({"job", "j"}, contract_keys.JOB_KEYS),
    ({"progress"}, contract_keys.PROGRESS_KEYS),
])
def test_status_reads_only_contract_keys(receivers: set[str], keys: tuple[str, ...]) -> None:
    read = _keys_read(REPO / "hcli" / "status.py", receivers)
    assert read, f"status reads nothing through {receivers}: the receiver names changed"
    assert read <= set(keys), f"status reads keys outside the contract: {read - set(keys)}"


def test_status_and_keys_modules_import_no_pydantic_at_module_level() -> None:
    for path in (REPO / "hcli" / "status.py", REPO / "hcli" / "contract_keys.py"):
        top = [n for n in ast.parse(path.read_text()).body
               if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m.startswith(("pydantic", "hcli.contract"))
                    and m != "hcli.contract_keys"}, path


# -- docs/run-folder.md ----------------------------------------------------------------------


def _doc_blocks() -> dict[str, list[Any]]:
    """The JSON examples under each `## \\`file\\`` heading of the doc."""
    blocks: dict[str, list[Any]] = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0].strip("` ")
        for lang, body in re.findall(r"```(json|jsonl)\n(.*?)```", section, flags=re.S):
            docs = [json.loads(line) for line in body.splitlines() if line.strip()] \
                if lang == "jsonl" else [json.loads(body)]
            blocks.setdefault(title, []).extend(docs)
    return blocks


def test_doc_examples_are_valid_json_for_every_file() -> None:
    blocks = _doc_blocks()
    assert {"state.json", "progress.json", "metrics.jsonl", "results.json",
            "provenance.json"} <= set(blocks)


@pytest.mark.parametrize(("title", "model"), [
    ("state.json", State), ("progress.json", Progress), ("results.json", MulticlassResults),
    ("provenance.json", Provenance),
])
def test_doc_example_matches_model(title: str, model: type[BaseModel]) -> None:
    (example,) = _doc_blocks()[title]
    dump(model.model_validate(example))  # every documented field exists in the model
    require_complete(model, example)  # every model field is documented


def test_doc_metrics_lines_cover_every_line_model() -> None:
    lines = _doc_blocks()["metrics.jsonl"]
    parsed = [parse_metrics_line(obj) for obj in lines]
    by_type = {type(p): obj for p, obj in zip(parsed, lines, strict=True)}
    assert set(by_type) == {TrainLine, ValLine, EventLine}
    for model, obj in by_type.items():
        dump(model.model_validate(obj))
        require_complete(model, obj)


def test_doc_lists_every_event_name() -> None:
    names = EventLine.model_fields["event"].annotation.__args__  # type: ignore[union-attr]
    section = DOC.read_text().split("## `metrics.jsonl`")[1].split("## ")[0]
    assert all(f"`{name}`" in section for name in names)


# -- reading older files, refusing unknown fields when writing -------------------------------


def test_older_files_read_with_defaults() -> None:
    state = State.model_validate({"state": "PENDING", "kind": "multiclass"})
    assert state.jobs == [] and state.attempt == 1
    old_job = JobRecord.model_validate({"job_id": "1", "executor": "slurm",
                                        "submitted_at": "2026-11-24T10:00:00+00:00",
                                        "attempt": 1, "starts": ["2026-11-24T10:01:00+00:00"]})
    assert old_job.ends == [] and old_job.hardware == []
    old = MulticlassResults.model_validate({
        "run_id": "r", "kind": "multiclass", "miou": 0.4,
        "val": {"best_miou": 0.41, "best_step": 350},
        "compute": {"wall_s": 812.0, "restarts": 1, "device": "cpu", "world_size": 1},
    })
    assert old.val.last_miou is None and old.compute.node_hours is None
    assert old.compute.wall_s == 812.0


def test_unknown_fields_kept_on_read_refused_on_write() -> None:
    state = State.model_validate({"state": "RUNNING", "future_field": 1})
    assert state.model_extra == {"future_field": 1}
    with pytest.raises(ValueError, match="future_field"):
        dump(state)
    with pytest.raises(ValueError, match=r"jobs\.hardware.*\['gpu'\]"):
        dump(State(jobs=[JobRecord(job_id="1", hardware=[Hardware.model_validate({"gpu": 1})])]))


# -- compute over every execution ------------------------------------------------------------


T0 = datetime(2026, 11, 24, 10, 0, 0).astimezone()


def _iso(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="seconds")


def _two_executions(**job: Any) -> State:
    """A SLURM job requeued once: 60 min on 2 nodes × 4 GPUs, then 30 min on 1 node × 1 GPU."""
    return State(restarts=1, jobs=[JobRecord(
        job_id="77", executor="slurm", starts=[_iso(0), _iso(70)], ends=[_iso(60), _iso(100)],
        hardware=[Hardware(host="n1", nodes=2, world_size=8, gpus=8),
                  Hardware(host="n2", nodes=1, world_size=1, gpus=1)], **job)])


def test_compute_counts_every_execution() -> None:
    c = compute_from_state(_two_executions(), device="cuda:0", world_size=1)
    assert [a.wall_s for a in c.attempts] == [3600.0, 1800.0]
    assert c.wall_s == 5400.0
    assert c.node_hours == pytest.approx(2 * 1.0 + 1 * 0.5)
    assert c.gpu_hours == pytest.approx(8 * 1.0 + 1 * 0.5)
    assert c.restarts == 1 and c.hosts == ["n1", "n2"] and c.unended == 0


def test_compute_current_execution_up_to_now_and_unended() -> None:
    state = _two_executions()
    state.jobs[0].ends = [None]  # the first died unrecorded; the second is this one, running
    c = compute_from_state(state, now=_iso(90))
    assert [a.wall_s for a in c.attempts] == [None, 1200.0]
    assert c.unended == 1 and c.wall_s == 1200.0


def test_compute_ignores_jobs_of_earlier_attempts() -> None:
    state = _two_executions(attempt=1)
    state.attempt = 2  # `submit --force` moved attempt 1 aside
    state.jobs.append(JobRecord(job_id="90", attempt=2, starts=[_iso(200)], ends=[_iso(230)]))
    c = compute_from_state(state)
    assert c.wall_s == 1800.0 and [a.job_id for a in c.attempts] == ["90"]


# -- the writers -----------------------------------------------------------------------------


def _ctx(run: Run, job_id: str) -> Any:
    from jobs.runtime import JobContext

    return JobContext(run=run, spec=run.spec(), job_id=job_id, stop=None)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    spec = load_spec(flags={"train.steps": 10, "train.warmup_steps": 1})
    created = create_run(tmp_path / "runs", "multiclass-convnext-abc", spec, snapshot=False)
    created.add_job("77", "slurm")
    return created


def test_requeued_run_state_event_and_results(run: Run) -> None:
    """Execution 1 is requeued at step 5; execution 2 (same SLURM job id) completes. state.json
    records both with their ends and hardware, metrics.jsonl gets the requeued event, and
    results.json counts both executions' compute."""
    from jobs.results import write_results
    from jobs.runtime import _mark_running, _update

    _mark_running(_ctx(run, "77"), Hardware(host="n1", nodes=2, world_size=2, gpus=2))
    requeue = dump(Requeue(at=_iso(0), step=5, reason="SIGUSR2", job_id="77"))
    _update(run, ended=True, state="REQUEUED", requeues=[requeue])
    _mark_running(_ctx(run, "77"), Hardware(host="n2"))
    state = State.model_validate(run.state())
    (job,) = state.jobs
    assert state.state == "RUNNING" and state.restarts == 1
    assert len(job.starts) == 2 and job.ends[0] is not None and len(job.ends) == 1
    assert [h.host for h in job.hardware] == ["n1", "n2"]
    lines = [parse_metrics_line(json.loads(x))
             for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [EventLine(step=5, time=_iso(0), event="requeued", reason="SIGUSR2",
                               job_id="77")]

    # Back-date the executions so their lengths are known: 60 min on 2 nodes, then 30 min.
    raw = run.state()
    raw["jobs"][0]["starts"] = [_iso(0), _iso(70)]
    raw["jobs"][0]["ends"] = [_iso(60)]
    run.update_state(**raw)
    payload = _multiclass_payload(run.run_id)
    with pytest.raises(ValueError, match=r"missing field\(s\): val\.last_miou"):
        write_results(run, {**payload, "val": {"best_miou": 0.4, "best_step": 8}},
                      device="cuda:0", world_size=2)
    results = write_results(run, payload, device="cuda:0", world_size=2)
    compute = results["compute"]
    assert len(compute["attempts"]) == 2 and compute["restarts"] == 1
    first, second = compute["attempts"]
    assert first["wall_s"] == 3600.0 and first["node_hours"] == 2.0
    assert second["end"] is not None and second["wall_s"] >= 1800.0  # counted up to now
    assert compute["wall_s"] == pytest.approx(first["wall_s"] + second["wall_s"])
    assert compute["node_hours"] == pytest.approx(2.0 + second["wall_s"] / 3600, abs=1e-3)
    assert json.loads((run.path / "results.json").read_text()) == results

    _update(run, ended=True, state="COMPLETED")
    assert State.model_validate(run.state()).jobs[0].ends[1] is not None


def _multiclass_payload(run_id: str) -> dict[str, Any]:
    """What the multiclass job hands write_results: every field but compute."""
    fields = {name: info.get_default(call_default_factory=True)
              for name, info in MulticlassResults.model_fields.items() if name != "compute"}
    fields.update(run_id=run_id, kind="multiclass", backbone="convnext", miou=0.4,
                  val={"best_miou": 0.4, "best_step": 8, "last_miou": 0.38})
    return {k: dump(v) if isinstance(v, BaseModel) else v for k, v in fields.items()}


def test_write_results_refuses_unknown_fields(run: Run) -> None:
    from jobs.results import write_results

    with pytest.raises(ValueError, match="mIoU"):
        write_results(run, {**_multiclass_payload(run.run_id), "mIoU": 0.4}, device="cpu",
                      world_size=1)
    assert not (run.path / "results.json").exists()


def test_probe_results_have_no_compute(run: Run) -> None:
    from jobs.results import write_results

    out = write_results(run, {"run_id": run.run_id, "kind": "probe", "backbone": None,
                              "probe": {"hostname": "n1"}}, device="cpu", world_size=1)
    assert out == {"run_id": run.run_id, "kind": "probe", "backbone": None,
                   "probe": {"hostname": "n1"}}


def test_job_record_has_one_builder(run: Run) -> None:
    from jobs.runtime import _mark_running

    _mark_running(_ctx(run, "local-9"))  # a job started by hand: recorded by the same builder
    jobs = State.model_validate(run.state()).jobs
    assert [j.job_id for j in jobs] == ["77", "local-9"]
    assert set(run.state()["jobs"][0]) == set(run.state()["jobs"][1]) == set(JobRecord.model_fields)
    src = (REPO / "jobs" / "runtime.py").read_text() + (REPO / "hcli" / "runs.py").read_text()
    assert src.count("JobRecord.new(") == 2 and '"submitted_at"' not in src


def test_progress_writer_lines_through_the_contract(tmp_path: Path) -> None:
    from jobs.progress import ProgressWriter

    pw = ProgressWriter(tmp_path, 10, interval=3600, tensorboard=False)
    pw.log(1, "train", loss=0.5, lr=0.1, grad_norm=None, samples_per_s=3.0, epoch=0, extra_fig=2)
    pw.event(1, "resumed", checkpoint="step-000001.pt")
    with pytest.raises(ValueError, match="not_a_number"):
        pw.log(2, "train", loss=0.4, not_a_number="x")
    with pytest.raises(ValidationError):
        pw.event(2, "requeud")
    with pytest.raises(ValueError, match="test"):
        pw.log(2, "test", miou=0.1)
    with pytest.raises(ValueError, match="best_note"):
        pw.note(best_note="text")  # refused in the caller's thread, not the heartbeat's
    pw.note(best_val_loss=0.25)  # a kind's own number
    pw.update(3, loss=0.3)
    pw.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [type(parse_metrics_line(x)) for x in lines] == [TrainLine, EventLine]
    assert lines[0]["extra_fig"] == 2 and lines[0]["grad_norm"] is None
    progress = Progress.model_validate(json.loads((tmp_path / "progress.json").read_text()))
    assert progress.step == 3 and progress.phase == "done" and progress.latest == {"loss": 0.3}
    assert progress.model_extra == {"best_val_loss": 0.25}
