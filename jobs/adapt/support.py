"""Which run an adaptation starts from, which images it may fit, and which it is scored on.

Torch-free: `hcli submit adapt` refuses a source here before anything is queued, and the job
draws its support set with the same functions. The support set is a prefix of a permutation of
the held-out ids seeded by the adaptation's seed, so it is the same on every attempt, differs
between seeds, and a seed's 5-shot set is contained in its 10-shot set (shot curves then differ
in the number of shots, not in which images were drawn).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hcli.errors import SpecError
from hcli.runs import Run, find_run

if TYPE_CHECKING:
    from hcli.data.manifest import Manifest
    from hcli.spec import Spec

__all__ = [
    "LODO_PROTOCOLS",
    "check_lodo",
    "draw_support",
    "held_out_of",
    "source_of",
]

#: Protocols whose test fold is one unseen domain (a material, a material group, a content type).
LODO_PROTOCOLS = ("lomo", "lomo-grouped", "locontent")


def check_lodo(source: Run, spec: Spec) -> None:
    """SpecError unless `source` trained under a leave-one-domain-out protocol."""
    if spec.data.protocol not in LODO_PROTOCOLS:
        raise SpecError(
            f"adapt.source_run={source.run_id}: that run used data.protocol="
            f"{spec.data.protocol}, which holds out no domain; adapt a run trained with "
            f"data.protocol one of {', '.join(LODO_PROTOCOLS)}"
        )


def source_of(ref: str, runs_root: Path) -> tuple[Run, Spec]:
    """The source run `ref` names and its spec, refused unless it held out a domain."""
    run = find_run(runs_root, ref)
    spec = run.spec()
    check_lodo(run, spec)
    return run, spec


def held_out_of(source: Run, spec: Spec, manifest: Manifest) -> list[str]:
    """The source's test ids (its held-out domain), sorted: from its provenance.json when it
    has one (exactly what it was scored on), else re-derived from its spec's fold."""
    from jobs.provenance import read_ids, read_provenance

    prov = read_provenance(source)
    if prov is not None and "test" in prov.samples:
        return sorted(read_ids(source.path, prov.samples["test"]))
    from hcli.data.splits import get_fold

    return sorted(get_fold(manifest, spec.data, spec.seed).test)


def draw_support(held_out: Sequence[str], shots: int, seed: int) -> list[str]:
    """`shots` ids of `held_out`, deterministic by `seed`; at least one id stays for scoring."""
    # numpy here, not at the top: `hcli submit adapt` plans with this module and never draws
    # (~70 ms of its start, benchmarks/bench_adapt_submit.py).
    import numpy as np

    ids = sorted(held_out)
    if shots >= len(ids):
        raise SpecError(
            f"adapt.shots={shots} but the held-out domain has {len(ids)} images, which leaves "
            f"none to score; use adapt.shots below {len(ids)}"
        )
    order = np.random.default_rng([seed, 0xADA]).permutation(len(ids))
    return [ids[i] for i in order[:shots]]
