"""`probe`: what a node offers (torch, CUDA, GPUs, CPUs, data, runs root), before GPU hours."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="probe",
    summary="check what a node offers before spending GPU hours",
    workload="jobs.probe:run",
    results_model="hcli.contract:ProbeResults",
    metric="",
    collect_metrics=(),
    needs_data=False,
    order=0,
)
