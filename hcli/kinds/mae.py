"""`mae`: masked-image pretraining of an encoder on the images a fold allows."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="mae",
    summary="masked-image pretraining of the encoder (SimMIM-style)",
    workload=None,
    sections=("mae",),
    metric="loss",
    mode="min",
    collect_metrics=("recon_loss",),
    order=2,
)
