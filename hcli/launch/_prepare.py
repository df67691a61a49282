"""`hcli data prepare --cluster`: one SLURM array task per source shard, then a merge that waits.

Each task runs `hcli.data.prepare.prepare_source_shard` (which writes its shard atomically plus a
sidecar), so a failed or time-limited task is simply submitted again; the merge job
(`afterok` on the array) writes manifest.json from the sidecars. Shards already finished for
exactly these inputs are not submitted again.
"""

from __future__ import annotations

import shlex
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from hcli.errors import ClusterError, UserError

__all__ = ["PrepareSubmission", "submit_prepare"]


@dataclass
class PrepareSubmission:
    array_job: str | None
    tasks: int
    reused: int
    merge_job: str
    folder: Path


def submit_prepare(
    source: str,
    out: Path,
    max_side: int,
    *,
    partition: str | None = None,
    time_min: int = 60,
    mem_gb: float = 4,
    max_parallel: int | None = None,
) -> PrepareSubmission:
    import submitit

    from hcli.data import prepare as prep
    from hcli.scheduler import cluster_available, max_array_size

    if not cluster_available():
        raise UserError("--cluster: sbatch is not on the PATH; run without --cluster (--workers N)")
    source_id, sources = prep.resolve_source(source)
    if any(s.path is None for s in sources):
        raise UserError(
            "--cluster needs a local --source folder; hub streaming runs in one process"
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in sources if prep._finished(out, s, max_side) is None]
    folder = out / ".slurm" / uuid.uuid4().hex[:8]
    params = {
        "time": time_min,
        "cpus_per_task": 1,
        "mem": f"{mem_gb:g}G",
        "job_name": f"hcli-prepare-{out.name}",
    }
    if partition:
        params["partition"] = partition
    try:
        array_job = None
        if todo:
            if len(todo) > max_array_size():
                raise UserError(
                    f"{len(todo)} source shards exceed the cluster's MaxArraySize; "
                    "run prepare twice or merge shards first"
                )
            ex = submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable))
            ex.update_parameters(**params, array_parallelism=max_parallel or len(todo))
            with ex.batch():
                jobs = [
                    ex.submit(prep.prepare_source_shard, s.path, out, max_side, s.index, s.name)
                    for s in todo
                ]
            array_job = jobs[0].job_id.split("_")[0]
        merge = submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable))
        deps = {"dependency": f"afterok:{array_job}"} if array_job else {}
        merge.update_parameters(
            **{**params, "job_name": f"hcli-merge-{out.name}"}, additional_parameters=deps
        )
        merge_job = merge.submit(prep.merge_manifest, out, source_id, max_side, None, len(sources))
    except (OSError, RuntimeError) as exc:
        raise ClusterError(f"sbatch failed: {exc}") from exc
    return PrepareSubmission(
        array_job, len(todo), len(sources) - len(todo), merge_job.job_id, folder
    )
