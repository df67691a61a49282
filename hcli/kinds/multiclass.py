"""`multiclass`: UPerNet over a timm encoder segmenting the 16 ARTeFACT classes."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="multiclass",
    summary="UPerNet over a timm encoder: 16-class damage segmentation",
    workload="jobs.multiclass.task:run",
    results_model="hcli.contract:MulticlassResults",
    metric="miou",
    collect_metrics=("miou", "binary_miou", "coarse_miou", "rare_miou"),
    order=1,
)
