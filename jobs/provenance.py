"""provenance.json: what data a run saw, and what the runs it was initialised from saw.

Written when a run starts (`record_start`) and extended when it ends (`record_end`). The id lists
live beside it under `provenance/` (one id per line, sorted; provenance.json holds their count and
sha256), so a chain stays checkable even when an ancestor's folder is gone: each run copies the
`seen` lists of its sources. `check_init_leakage` is the guard of `model.init_from`: it reads the
source's provenance, so it holds for sources whose data selection is not a fold (pretraining on
unlabelled images, meta-training over domains). Torch-free.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcli.contract import DataRead, Provenance, SampleSet, Seen, dump
from hcli.errors import SpecError
from hcli.fsutil import atomic_write_json, atomic_write_text, read_json
from hcli.runs import Run, find_run, now_iso
from hcli.spec import Spec

if TYPE_CHECKING:
    from hcli.data.manifest import Manifest

__all__ = [
    "PROVENANCE",
    "check_init_leakage",
    "init_saw_test",
    "read_ids",
    "read_provenance",
    "record_end",
    "record_start",
    "resolve_source",
]

PROVENANCE = "provenance.json"
_LISTS = "provenance"


def _write_ids(run_dir: Path, rel: str, ids: Iterable[str]) -> SampleSet:
    text = "".join(f"{i}\n" for i in sorted(set(ids)))
    atomic_write_text(run_dir / rel, text)
    return SampleSet(count=text.count("\n"), sha256=hashlib.sha256(text.encode()).hexdigest(),
                     file=rel)


def read_ids(run_dir: Path, sample_set: SampleSet) -> set[str]:
    path = Path(run_dir) / sample_set.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(
            f"{path} is missing; provenance.json of {Path(run_dir).name} names it"
        ) from None
    if hashlib.sha256(data).hexdigest() != sample_set.sha256:
        raise SpecError(f"{path} does not match the sha256 in provenance.json; the run folder "
                        "was altered, so what it saw is unknown")
    return set(data.decode().split())


def read_provenance(run: Run) -> Provenance | None:
    raw = read_json(run.path / PROVENANCE)
    return Provenance.model_validate(raw) if isinstance(raw, dict) else None


def resolve_source(ref: str, runs_root: Path) -> Run | None:
    """The run `model.init_from` names, or None when it names a checkpoint file."""
    if Path(ref).is_file():
        return None
    return find_run(runs_root, ref)


def _fold_seen(run: Run, manifest: Manifest | None) -> dict[str, set[str]]:
    """A source without provenance.json (a run from before provenance existed): its training
    ids re-derived from its spec's fold, as the guard always did for such runs. Only right when
    the source trained on a fold; every newer run has provenance.json instead."""
    from hcli.data.manifest import load_manifest
    from hcli.data.splits import get_fold

    spec = run.spec()
    fold = get_fold(manifest or load_manifest(spec.data.root), spec.data, spec.seed)
    train = set(fold.train)
    # Pretraining may widen its images beyond the fold's training ids (jobs.mae.task).
    if spec.kind == "mae" and spec.mae.images != "train":
        train |= set(fold.val) | (set(fold.test) if spec.mae.images == "all" else set())
    return {"train": train}


def _chain_seen(source: Run, manifest: Manifest | None = None) -> list[tuple[Seen, set[str]]]:
    """Everything the source and its ancestors saw, each list with the run that saw it."""
    prov = read_provenance(source)
    if prov is None:
        return [
            (Seen(run_id=source.run_id, split=split, count=len(ids), sha256="", file="",
                  derived=True), ids)
            for split, ids in _fold_seen(source, manifest).items()
        ]
    return [(seen, read_ids(source.path, seen)) for seen in prov.seen]


def record_start(
    run: Run,
    spec: Spec,
    *,
    manifest_path: Path,
    train_ids: Iterable[str],
    val_ids: Iterable[str],
    test_ids: Iterable[str] | None = None,
    init_from: list[str],
) -> Provenance:
    """Write provenance.json as the run starts (a resumed run rewrites the same content)."""
    runs_root = run.path.parent
    manifest_path = Path(manifest_path)
    data = _data_read(manifest_path.parent)
    if data.staged:
        manifest_path = Path(data.root) / manifest_path.name  # the shared one, byte-identical
    samples = {
        "train": _write_ids(run.path, f"{_LISTS}/train.txt", train_ids),
        "val": _write_ids(run.path, f"{_LISTS}/val.txt", val_ids),
    }
    if test_ids is not None:
        samples["test"] = _write_ids(run.path, f"{_LISTS}/test.txt", test_ids)
    seen = [
        Seen(run_id=run.run_id, split=split, **dump(samples[split]))
        for split in ("train", "val")
    ]
    sources: list[str] = []
    for ref in init_from:
        source = resolve_source(ref, runs_root)
        if source is None:
            sources.append(str(Path(ref).resolve()))
            continue
        sources.append(source.run_id)
        for entry, ids in _chain_seen(source):
            rel = f"{_LISTS}/seen/{entry.run_id}-{entry.split}.txt"
            copied = _write_ids(run.path, rel, ids)
            seen.append(Seen(run_id=entry.run_id, split=entry.split, derived=entry.derived,
                             **dump(copied)))
    prov = Provenance(
        run_id=run.run_id,
        kind=spec.kind,
        started_at=now_iso(),
        manifest=str(manifest_path),
        manifest_sha256=hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        samples=samples,
        init_from=sources,
        seen=seen,
        data=data,
    )
    atomic_write_json(run.path / PROVENANCE, dump(prov))
    return prov


def _data_read(folder: Path) -> DataRead:
    """Where the data in `folder` came from: a node-local copy `jobs.data.staging` made in
    this process, a fallback it chose, or the folder itself. Looked up in sys.modules, not
    imported: the staging module (which imports torch) is loaded only by jobs that staged."""
    staging = sys.modules.get("jobs.data.staging")
    found = staging.origin_of(folder) if staging is not None else None
    if found is None:
        return DataRead(root=str(folder), read_from=str(folder))
    return DataRead(root=str(found.root), read_from=str(found.read_from), staged=found.staged,
                    reused=found.reused, bytes=found.bytes, copy_s=found.copy_s,
                    verify_s=found.verify_s, host=found.host, note=found.note)


def record_end(run: Run, **extra: Any) -> Provenance:
    """Extend provenance.json when the run finishes: its end time and what the job adds
    (`extra`, e.g. the checkpoint evaluated and the final step)."""
    prov = read_provenance(run)
    if prov is None:
        raise FileNotFoundError(f"{run.path / PROVENANCE}: record_start was never called")
    prov.finished_at = now_iso()
    prov.end.update(extra)
    atomic_write_json(run.path / PROVENANCE, dump(prov))
    return prov


def init_saw_test(run: Run) -> str | None:
    """The first run of `run`'s model.init_from chain that trained or validated on `run`'s
    test images, from `run`'s own provenance.json (the lists it copied from its sources against
    its test list); None when none did or the run records no test list. Such a chain got past
    `check_init_leakage` only by model.init_allow_test_overlap (or is an adaptation's source):
    results.json says so (`transductive`, `init_transductive`)."""
    prov = read_provenance(run)
    if prov is None or "test" not in prov.samples:
        return None
    test = read_ids(run.path, prov.samples["test"])
    for seen in prov.seen:
        if seen.run_id != run.run_id and read_ids(run.path, seen) & test:
            return seen.run_id
    return None


def check_init_leakage(
    spec: Spec, test_ids: Iterable[str], runs_root: Path, manifest: Manifest | None = None
) -> None:
    """SpecError when `model.init_from`'s chain trained or validated on this run's test images,
    naming the run that saw them (unless `model.init_allow_test_overlap`). `manifest` serves
    only the fallback for a source without provenance.json (default: the source's own)."""
    ref = spec.model.init_from
    if ref is None or spec.model.init_allow_test_overlap:
        return
    source = resolve_source(ref, runs_root)
    if source is None:
        return  # a bare checkpoint file says nothing of its data
    test = set(test_ids)
    for entry, ids in _chain_seen(source, manifest):
        leaked = ids & test
        if leaked:
            via = "" if entry.run_id == source.run_id else f" (through {source.run_id})"
            did = "trained" if entry.split == "train" else "validated"
            raise SpecError(
                f"model.init_from={ref}: run {entry.run_id}{via} {did} on {len(leaked)} of this "
                f"run's test images (e.g. {sorted(leaked)[0]}); hold the same images out in "
                "every run of the chain, or set model.init_allow_test_overlap=true to accept "
                "the leak"
            )
