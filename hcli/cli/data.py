"""`hcli data ...`: synth, prepare, stats, splits; each command imports its module inside."""

from typing import Any

import typer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


# ---------------------------------------------------------------------------------------------
# synth and prepare: hcli.data.synth / hcli.data.prepare, imported inside.
# ---------------------------------------------------------------------------------------------


@app.command("synth")
def synth_cmd(
    out: str = typer.Option(..., "--out", help="Folder to write; parquet goes to OUT/data/."),
    n: int = typer.Option(120, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    size: int = typer.Option(384, "--size", help="Typical long side in pixels (varies ±15%)."),
    shards: int | None = typer.Option(
        None, "--shards", help="Parquet shards (default: one per 15 rows, like the hub)."
    ),
) -> None:
    """Write a synthetic ARTeFACT-format dataset (hub schema, PNG Image features)."""
    import time
    from pathlib import Path

    from hcli.data.synth import synthesize

    t0 = time.perf_counter()
    paths = synthesize(Path(out), n=n, seed=seed, size=size, shards=shards)
    typer.echo(
        f"wrote {n} synthetic rows in {len(paths)} parquet shard(s) to {Path(out) / 'data'} "
        f"({time.perf_counter() - t0:.1f} s); next: hcli data prepare --source {out} --out DATA"
    )


@app.command("prepare")
def prepare_cmd(
    source: str = typer.Option(
        ..., "--source", help="Downloaded dataset folder (parquet shards), or a hub id if online."
    ),
    out: str = typer.Option(..., "--out", help="Output folder: shard-NNNNN.h5 + manifest.json."),
    max_side: int = typer.Option(2048, "--max-side", help="Shrink so the long side is at most."),
    workers: int = typer.Option(1, "--workers", help="Processes, one source shard each."),
    cluster: bool = typer.Option(
        False, "--cluster", help="A SLURM job array, one task per source shard, then a merge."
    ),
    partition: str | None = typer.Option(None, "--partition", help="With --cluster."),
    time_min: int = typer.Option(60, "--time-min", help="With --cluster: per-task limit."),
    mem_gb: float = typer.Option(4, "--mem-gb", help="With --cluster: memory per task."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Convert parquet shards to chunked HDF5 shards; resumable and idempotent."""
    if cluster:
        from pathlib import Path

        from hcli.launch._prepare import submit_prepare

        sub = submit_prepare(
            source, Path(out), max_side, partition=partition, time_min=time_min, mem_gb=mem_gb
        )
        typer.echo(
            f"array job {sub.array_job or '-'}: {sub.tasks} source shard(s) to prepare, "
            f"{sub.reused} already done; merge job {sub.merge_job} writes "
            f"{out}/manifest.json after them (logs: {sub.folder})"
        )
        return
    from hcli.data.prepare import format_summary, prepare

    report = prepare(source, out, max_side=max_side, workers=workers, progress=not quiet)
    typer.echo(format_summary(report))


# ---------------------------------------------------------------------------------------------
# stats and splits: hcli.data.stats / hcli.data.splits, imported inside; both show folds
# through hcli.data.stats.protocol_feasibility.
# ---------------------------------------------------------------------------------------------


@app.command("stats")
def stats_cmd(
    data: str = typer.Argument(..., help="Prepared dataset folder (holds manifest.json)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout."),
    plot: str | None = typer.Option(
        None, "--plot", help="Write a PNG: class shares on a log axis and domain counts."
    ),
    protocol: list[str] | None = typer.Option(
        None, "--protocol", help="Protocol(s) whose folds to check (default: all four)."
    ),
    k: int = typer.Option(5, "--k", help="Folds for kfold."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    groups: str | None = typer.Option(
        None, "--groups", help="Material-groups YAML for lomo-grouped (default: the shipped one)."
    ),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="Share of train for val."),
    rare: float = typer.Option(0.01, "--rare", help="Pixel share below which a class is rare."),
    clip: float = typer.Option(10.0, "--clip", help="Class weights are clipped to [1/c, c]."),
    min_fold_size: int = typer.Option(10, "--min-fold-size", help="Flag smaller folds."),
) -> None:
    """Samples per domain, class frequencies and weights, rare classes, fold feasibility."""
    from pathlib import Path

    from hcli.cli._common import echo_err, print_json
    from hcli.data.manifest import load_manifest
    from hcli.data.splits import PROTOCOLS, load_material_groups
    from hcli.data.stats import plot_stats, summarize
    from hcli.errors import UserError

    protocols = tuple(protocol or PROTOCOLS)
    for p in protocols:
        if p not in PROTOCOLS:
            raise UserError(
                f"--protocol {p!r} is not a protocol; use one of {', '.join(PROTOCOLS)}"
            )
    if groups is not None and "lomo-grouped" not in protocols:
        raise UserError("--groups applies to --protocol lomo-grouped, which is not shown; drop it")
    manifest = load_manifest(Path(data))
    summary = summarize(
        manifest,
        protocols=protocols,
        rare_threshold=rare,
        clip=clip,
        k=k,
        seed=seed,
        val_fraction=val_fraction,
        groups=load_material_groups(groups) if groups is not None else None,
        min_fold_size=min_fold_size,
    )
    if plot:
        out = plot_stats(manifest, Path(plot), rare_threshold=rare)
        echo_err(f"plot written to {out}")
    if as_json:
        print_json(summary)
        return
    _print_stats(summary)


def _print_stats(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{summary['samples']}[/] samples, {summary['skipped']} skipped rows; "
        f"Background {summary['background_share']:.2%} of all pixels"
    )
    for key in ("material", "content"):
        t = Table(title=f"samples per {key}", title_justify="left")
        t.add_column(key)
        t.add_column("samples", justify="right")
        for name, n in summary["domains"][key].items():
            t.add_row(name, str(n))
        console.print(t)
    t = Table(
        title="classes (share of annotated pixels; weights normalised to mean 1)",
        title_justify="left",
    )
    for col in ("id", "class", "share", "images", "inverse", "inverse_sqrt", "log"):
        t.add_column(col, justify="left" if col == "class" else "right")
    rare = set(summary["rare"])
    for c in summary["classes"]:
        name = c["name"]
        style = "red" if name in rare else ("dim" if c["pixels"] == 0 else None)
        w = [f"{summary['class_weights'][p][name]:.3g}" for p in ("inverse", "inverse_sqrt", "log")]
        t.add_row(str(c["id"]), name, f"{c['share']:.3%}", str(c["images"]), *w, style=style)
    console.print(t)
    console.print(f"rare (< {summary['rare_threshold']:.1%}): {', '.join(summary['rare']) or '-'}")
    console.print(f"absent: {', '.join(summary['absent']) or '-'}")
    for proto, folds in summary["protocols"].items():
        console.print(_fold_table(proto, folds))


def _fold_table(protocol: str, folds: list[dict]) -> object:
    from rich.table import Table

    from hcli.classes import CLASS_NAMES

    def ids(names: list[str]) -> str:
        # Class ids keep the table narrow; the class table and --json give the names.
        return " ".join(str(CLASS_NAMES.index(n)) for n in names) or "-"

    t = Table(title=f"protocol {protocol} (missing: class ids)", title_justify="left")
    for col in ("fold", "held out", "train", "val", "test", "miss train", "miss test", "flags"):
        t.add_column(
            col,
            justify="right" if col in ("fold", "train", "val", "test") else "left",
            no_wrap=col in ("held out", "flags"),
        )
    for f in folds:
        t.add_row(
            str(f["index"]),
            f["held_out"],
            str(f["train"]),
            str(f["val"]),
            str(f["test"]),
            ids(f["missing_in_train"]),
            ids(f["missing_in_test"]),
            ", ".join(f["flags"]) or "ok",
            style=("red" if not f["feasible"] else "yellow") if f["flags"] else None,
        )
    return t


@app.command("splits")
def splits_cmd(
    data: str = typer.Argument(..., help="Prepared dataset folder (holds manifest.json)."),
    protocol: str = typer.Option(..., "--protocol", help="kfold | lomo | lomo-grouped | locontent"),
    k: int = typer.Option(5, "--k", help="Folds for kfold."),
    seed: int = typer.Option(0, "--seed", help="Split seed (the spec's seed in jobs)."),
    groups: str | None = typer.Option(
        None, "--groups", help="Material-groups YAML for lomo-grouped (default: the shipped one)."
    ),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="Share of train for val."),
    min_fold_size: int = typer.Option(10, "--min-fold-size", help="Flag smaller folds."),
    as_json: bool = typer.Option(False, "--json", help="Every fold with its id lists, as JSON."),
) -> None:
    """The folds of a protocol (the same ones jobs use), with sizes and flags."""
    from pathlib import Path

    from hcli.cli._common import print_json
    from hcli.data.manifest import load_manifest
    from hcli.data.splits import load_material_groups, make_splits
    from hcli.data.stats import protocol_feasibility
    from hcli.errors import UserError

    if groups is not None and protocol != "lomo-grouped":
        raise UserError(f"--groups applies to --protocol lomo-grouped, not {protocol}; drop it")
    manifest = load_manifest(Path(data))
    options: dict[str, Any] = {
        "k": k,
        "seed": seed,
        "val_fraction": val_fraction,
        "groups": load_material_groups(groups) if protocol == "lomo-grouped" else None,
        "min_fold_size": min_fold_size,
    }
    if as_json:
        print_json([f.to_dict() for f in make_splits(manifest, protocol, **options)])
        return
    from dataclasses import asdict

    from rich.console import Console

    reports = protocol_feasibility(manifest, protocol, **options)
    Console().print(_fold_table(protocol, [asdict(r) for r in reports]))
