"""`hcli bench`: measure step times on this node (or queue that as a SLURM job); hcli.bench."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hcli.cli._common import ConfigArg, Json, Overrides, RunsDir, echo_err, print_json

if TYPE_CHECKING:
    from hcli.bench import BenchItem
    from hcli.calibration import Calibration

__all__ = ["register"]


def bench(
    backbone: Annotated[
        str, typer.Option("--backbone", "-b", help="Backbones, comma-separated (convnext,swin,"
                          "maxvit or timm names).")
    ] = "convnext",
    crop: Annotated[str, typer.Option("--crop", help="Crop sizes, comma-separated.")] = "512",
    amp: Annotated[str, typer.Option("--amp", help="AMP settings: none, bf16, fp16.")] = "none",
    kinds: Annotated[
        str, typer.Option("--kinds", help="What to measure: multiclass, mae, meta, infer.")
    ] = "multiclass,mae,meta,infer",
    steps: Annotated[int, typer.Option("--steps", help="Timed steps (images for infer).")] = 10,
    warmup: Annotated[
        int, typer.Option("--warmup", help="Steps run before the timing starts.")
    ] = 2,
    cluster: Annotated[bool, typer.Option("--cluster", help="Measure in a SLURM job.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Measure on this machine, now.")] = False,
    config: ConfigArg = None,
    override: Overrides = None,
    runs_dir: RunsDir = None,
    json_out: Json = False,
) -> None:
    """Measure samples/s of a training step (data loading included), sliding-window inference
    s/image, peak memory and startup cost per kind x backbone x crop x AMP, and store them as
    this hardware's calibration under the runs root (read by `hcli plan`).

    The spec is the defaults (full Tiny encoders) on the quickstart's data, or --config, then the
    options above, then -o (e.g. -o train.batch_size=4, -o slurm.gpus_per_node=1).
    """
    from hcli.bench import check_items, plan_bench, submit_bench
    from hcli.errors import UserError
    from hcli.runs_dir import resolve_runs_dir
    from hcli.scheduler import cluster_available

    if cluster and local:
        raise UserError("--cluster cannot be combined with --local; pick one")
    root = resolve_runs_dir(runs_dir)
    items = plan_bench(backbones=[backbone], crops=[crop], amps=[amp], kinds=[kinds],
                       config=config, overrides=override or [])
    on_slurm = cluster or (not local and cluster_available())
    check_items(items, root)
    if on_slurm:
        if not cluster_available():
            raise UserError("--cluster: sbatch is not on the PATH; use --local, or load SLURM")
        if not cluster:
            echo_err("no --cluster/--local given: using slurm (sbatch found on the PATH)")
        job = submit_bench(items, root, steps=steps, warmup=warmup)
        if json_out:
            print_json(job)
        else:
            typer.echo(f"bench job {job['job_id']}: {len(items)} measurement(s); the "
                       f"calibration lands in {job['calibrations']} (log: {job['stdout']})")
        return
    cal, path, failed = _run_with_progress(items, root, steps, warmup, quiet=json_out)
    if json_out:
        print_json(cal.model_dump(mode="json"))
    else:
        _print_table(cal)
    if path is not None:
        echo_err(f"calibration: {path} (hardware {cal.hardware.key})")
    if failed:
        raise UserError(f"{len(failed)} measurement(s) failed: " + "; ".join(failed))


def _run_with_progress(
    items: "list[BenchItem]", root: Path, steps: int, warmup: int, *, quiet: bool
) -> "tuple[Calibration, Path | None, list[str]]":
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    from hcli.bench import run_bench

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=quiet,
                  transient=False) as bar:
        overall = bar.add_task(f"bench on this machine ({len(items)} measurements)",
                               total=len(items))
        current: dict[int, TaskID] = {}

        def progress(index: int, item: "BenchItem", done: int, total: int) -> None:
            if index not in current:
                current[index] = bar.add_task(f"  {item.label}", total=total)
            bar.update(current[index], completed=done)

        def on_entry(item: "BenchItem", entry: object, error: str | None) -> None:
            bar.advance(overall)
            if error is not None:
                console.print(f"[red]failed[/red] {error}")

        return run_bench(items, root, steps=steps, warmup=warmup, progress=progress,
                         on_entry=on_entry)


def _print_table(cal: "Calibration") -> None:
    from rich.console import Console
    from rich.table import Table

    hw = cal.hardware
    where = f"{hw.gpu_count} x {hw.gpu_name}" if hw.gpu_count else f"{hw.cpu}, {hw.cores} cores"
    table = Table(title=f"{where}, torch {hw.torch}", title_justify="left",
                  caption="* encoder_kwargs set (not the full encoder); infer: s/step is s/image",
                  caption_justify="left")
    for col in ("kind", "backbone", "crop", "amp", "batch", "s/step", "samples/s", "startup s",
                "peak MB", "steps"):
        table.add_column(col, justify="left" if col in ("kind", "backbone", "amp") else "right",
                         no_wrap=True)
    for e in cal.entries:
        table.add_row(e.kind, e.backbone + ("*" if e.encoder_kwargs else ""),
                      str(e.crop), e.amp, str(e.batch_size), f"{e.step_s:.4g}",
                      f"{e.samples_per_s:.4g}", f"{e.startup_s:.3g}", f"{e.peak_mem_mb:.0f}",
                      str(e.steps_measured))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
