"""`meta`: first-order MAML over the training domains of a fold."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="meta",
    summary="meta-learning over domains (first-order MAML, Reptile)",
    workload=None,
    sections=("meta",),
    order=3,
)
