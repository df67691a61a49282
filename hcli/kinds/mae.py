"""`mae`: masked-image pretraining of an encoder on the images a fold allows."""

from hcli.kinds._info import KindInfo

KIND = KindInfo(
    name="mae",
    summary="masked-image pretraining of the encoder (SimMIM-style)",
    workload="jobs.mae.task:run",
    sections=("mae",),
    results_model="hcli.contract:MaeResults",
    metric="loss",
    mode="min",
    collect_metrics=("recon_loss", "baseline_neighbour_mean_loss", "images_seen", "epochs"),
    order=2,
)
