"""`meta`: meta-learning (first-order MAML, Reptile, MAML) over the training domains of a fold."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="meta",
    summary="meta-learning over domains (first-order MAML, Reptile, MAML)",
    workload="jobs.meta.task:run",
    sections=("meta",),
    results_model="hcli.contract:MetaResults",
    metric="miou",
    collect_metrics=("miou", "in_domain_miou", "binary_miou", "rare_miou"),
    order=3,
)
