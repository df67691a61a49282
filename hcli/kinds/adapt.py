"""`adapt`: k-shot adaptation of a trained run to its held-out domain (docs/dg.md)."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="adapt",
    summary="k-shot adaptation of a source run to its held-out domain",
    workload="jobs.adapt.task:run",
    # `meta` for meta.inner_params, the default of adapt.params.
    sections=("meta", "adapt"),
    results_model="hcli.contract:AdaptResults",
    # Validated once, after the last step, on the support images it fitted: the held-out query
    # images never choose anything.
    metric="support_miou",
    mode="max",
    collect_metrics=("miou", "binary_miou", "rare_miou"),
    order=4,
)
