"""`adapt`: few-shot adaptation of a trained run to its held-out domain."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="adapt",
    summary="k-shot adaptation of a source run to its held-out domain",
    workload=None,
    sections=("meta", "adapt"),
    order=4,
)
