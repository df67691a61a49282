"""What a kind declares (see hcli.kinds)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KindInfo"]


@dataclass(frozen=True)
class KindInfo:
    name: str
    summary: str
    #: "module:callable" the job runs on the node (`callable(JobContext) -> Outcome`); None while
    #: the kind is declared but not runnable yet.
    workload: str | None
    #: Spec sections the kind reads beyond data/model/train/loss; other kinds' sections are inert
    #: for it (left out of its run id, ignored when grouping in collect).
    sections: tuple[str, ...] = ()
    #: "module:Model" validating its results.json (hcli.contract).
    results_model: str | None = None
    #: The validation figure that selects checkpoints; `status` shows `val_<metric>` from
    #: progress.json, `collect` sorts by it.
    metric: str = "miou"
    mode: str = "max"
    #: results.json figures `collect` tabulates for the kind, headline first.
    collect_metrics: tuple[str, ...] = ("miou",)
    #: Whether a run of the kind trains on a fold's data (its data must be prepared).
    needs_data: bool = True
    order: int = 100
