"""`hcli submit | resume | status | logs | cancel`: thin wrappers over hcli.launch, hcli.status."""

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hcli.cli._common import (
    ConfigArg,
    Json,
    Overrides,
    RunArg,
    RunsDir,
    complete_run_id,
    echo_err,
    print_json,
)

if TYPE_CHECKING:
    from rich.table import Table

if TYPE_CHECKING:
    from hcli.launch._submit import Mode

__all__ = ["register"]

ClusterOpt = Annotated[bool, typer.Option("--cluster", help="Submit to SLURM (sbatch).")]
LocalOpt = Annotated[bool, typer.Option("--local", help="Run on this machine (background).")]
ForegroundOpt = Annotated[
    bool, typer.Option("--foreground", help="Local, in this process (tests, the demo).")
]
SkipChecksOpt = Annotated[
    bool,
    typer.Option(
        "--skip-checks",
        help="Queue without checking data, init_from, container and weights here "
        "(e.g. data visible only from the nodes); the job checks at its start.",
    ),
]


def _mode(cluster: bool, local: bool, foreground: bool) -> "Mode":
    from hcli.errors import UserError
    from hcli.scheduler import cluster_available

    if cluster and (local or foreground):
        raise UserError("--cluster cannot be combined with --local/--foreground; pick one")
    if foreground:
        return "foreground"
    if cluster:
        if not cluster_available():
            raise UserError("--cluster: sbatch is not on the PATH; use --local, or load SLURM")
        return "slurm"
    if local:
        return "local"
    chosen: Mode = "slurm" if cluster_available() else "local"
    echo_err(
        f"no --cluster/--local given: using {chosen} "
        f"({'sbatch found on the PATH' if chosen == 'slurm' else 'no sbatch on the PATH'})"
    )
    return chosen


def _split_csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _check_before_queueing(
    planned: list, root: Path, *, slurm: bool, dry_run: bool, force: bool
) -> None:
    """Every run that would be queued passes `preflight` before any folder or job exists.

    A dry run only warns: it is how specs are written, often on a laptop without the data.
    """
    from hcli.errors import UserError
    from hcli.fsutil import read_json
    from hcli.launch._checks import preflight
    from hcli.runs import ACTIVE_STATES

    for p in planned:
        state = (read_json(root / p.run_id / "state.json") or {}).get("state")
        if state in ACTIVE_STATES or (state == "COMPLETED" and not force):
            continue  # nothing will be queued for it (submit_runs says why)
        try:
            preflight(p.spec, root, slurm=slurm)
        except UserError as exc:
            if not dry_run:
                if len(planned) > 1:  # say which run of the sweep; nothing of it is queued
                    raise type(exc)(f"{p.run_id}: {exc}") from None
                raise
            echo_err(f"warning: {p.run_id} would not be queued: {exc}")


def submit(
    kind: Annotated[str, typer.Argument(help="probe | multiclass (later: mae, meta, adapt)")],
    config: ConfigArg = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            "--backbone", "-b", help="convnext | swin | maxvit | a timm name; a,b,c sweeps"
        ),
    ] = None,
    override: Overrides = None,
    cluster: ClusterOpt = False,
    local: LocalOpt = False,
    foreground: ForegroundOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show run ids, specs, sbatch; do nothing.")
    ] = False,
    json_out: Json = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start a new attempt of a finished run.")
    ] = False,
    after: Annotated[
        str | None, typer.Option("--after", help="Wait for these runs (afterok): RUN_ID[,RUN_ID]")
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="Array/sweep parallelism cap (%N).")
    ] = None,
    skip_checks: SkipChecksOpt = False,
    runs_dir: RunsDir = None,
) -> None:
    """Submit a run (or a sweep: --backbone a,b and -o key=v1,v2 expand into a job array).

    Idempotent: a run that already exists and is queued, running or completed is not submitted
    again. Returns at once for --cluster and --local. The data, init_from, container and
    weights are checked before anything is queued (a dry run shows failed checks as warnings).
    """
    from hcli.errors import UserError
    from hcli.kinds import all_kinds, implemented_kinds
    from hcli.launch import plan_runs, submit_runs
    from hcli.runs import resolve_runs_dir

    if kind not in all_kinds():
        raise UserError(f"unknown kind {kind!r}; use one of {', '.join(all_kinds())}")
    if kind not in implemented_kinds():
        raise UserError(
            f"kind {kind!r} is specified (`hcli spec show --kind {kind}`) but has no job yet; "
            f"runnable kinds: {', '.join(implemented_kinds())}"
        )
    root = resolve_runs_dir(runs_dir)
    if skip_checks:
        # Into the spec (execution-only: the run id stays), so the job knows to check at start.
        override = [*(override or []), "slurm.skip_checks=true"]
    planned = plan_runs(kind, config=config, backbones=_split_csv(backbone), overrides=override)
    mode: Mode = (
        "slurm" if dry_run and not (local or foreground) else _mode(cluster, local, foreground)
    )
    _check_before_queueing(planned, root, slurm=mode == "slurm", dry_run=dry_run, force=force)
    outcomes = submit_runs(
        planned,
        root,
        mode=mode,
        dry_run=dry_run,
        force=force,
        after=_split_csv(after),
        max_parallel=max_parallel,
    )
    if json_out:
        if dry_run and len(outcomes) == 1:
            o = outcomes[0]
            print_json({"run_id": o.run_id, "spec": o.spec, "sbatch": o.sbatch})
        else:
            print_json(
                [
                    {
                        "run_id": o.run_id,
                        "action": o.action,
                        "state": o.state,
                        "job_id": o.job_id,
                        "run_dir": str(o.run_dir),
                        **({"spec": o.spec, "sbatch": o.sbatch} if dry_run else {}),
                    }
                    for o in outcomes
                ]
            )
    else:
        _print_outcomes(outcomes, dry_run)
    if mode == "foreground" and not dry_run:
        _run_foreground([o for o in outcomes if o.action == "submitted"])


def _print_outcomes(outcomes: list, dry_run: bool) -> None:
    from hcli.spec import spec_to_yaml  # noqa: F401

    for o in outcomes:
        if dry_run:
            import yaml

            typer.echo(f"# run id: {o.run_id}  (state: {o.state}; would be {o.run_dir})")
            typer.echo("# --- resolved spec ---")
            typer.echo(yaml.safe_dump(o.spec, sort_keys=False, width=100), nl=False)
            typer.echo("# --- sbatch script ---")
            typer.echo(o.sbatch)
        elif o.action == "exists":
            typer.echo(
                f"{o.run_id}: already {o.state} (job {o.job_id}); nothing submitted  {o.run_dir}"
            )
        else:
            typer.echo(f"{o.run_id}: submitted as job {o.job_id}  {o.run_dir}")


def _run_foreground(outcomes: list) -> None:
    from jobs.entry import JobTarget

    os.environ["HCLI_JOB_ID"] = "foreground"
    for o in outcomes:
        echo_err(f"running {o.run_id} in the foreground (Ctrl-C saves a checkpoint and stops)")
        JobTarget(o.run_dir, use_snapshot=False)()


def resume(
    run: RunArg,
    cluster: ClusterOpt = False,
    local: LocalOpt = False,
    foreground: ForegroundOpt = False,
    skip_checks: SkipChecksOpt = False,
    runs_dir: RunsDir = None,
) -> None:
    """Continue a stopped, failed or cancelled run from its newest complete checkpoint.

    Checks its data, init_from, container and weights first, as `hcli submit` does.
    """
    from hcli.launch import resume_run
    from hcli.launch._checks import preflight
    from hcli.runs import find_run, resolve_runs_dir

    root = resolve_runs_dir(runs_dir)
    found = find_run(root, run)  # an unknown run is the first thing to say
    mode = _mode(cluster, local, foreground)
    # A completed run is refused by resume_run with its own message; the job checks again at
    # its start whatever is skipped here (spec.yaml is left as it was submitted).
    if not skip_checks and found.state().get("state") != "COMPLETED":
        preflight(found.spec(), root, slurm=mode == "slurm")
    outcome = resume_run(root, str(found.path), mode=mode)
    typer.echo(f"{outcome.run_id}: resumed as job {outcome.job_id}")
    if mode == "foreground":
        _run_foreground([outcome])


def status(
    run: Annotated[
        str | None,
        typer.Argument(
            help="One run in detail: id, unique prefix or path.",
            show_default=False,
            autocompletion=complete_run_id,
        ),
    ] = None,
    json_out: Json = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh every 5 s until Ctrl-C.")
    ] = False,
    kind: Annotated[str | None, typer.Option("--kind", help="Only runs of this kind.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="Only runs in this state.")] = None,
    runs_dir: RunsDir = None,
) -> None:
    """Every run with its state, job, restarts, progress, latest metric, ETA, heartbeat age and,
    for failed, cancelled, stale and requeued runs, why. With RUN: that run in detail (jobs,
    node-hours, requeues, checkpoints, metrics, files, and the command that continues it)."""
    # `hcli.cli._fast` answers the common forms of this command without typer; what it does
    # not take (`--watch`, `--help`, a RUN, anything unusual) comes here.
    from hcli.cli._status_view import show, show_run
    from hcli.runs import resolve_runs_dir

    root = resolve_runs_dir(runs_dir)
    if run is not None:
        from hcli.errors import UserError

        if watch or kind or state:
            raise UserError("with a RUN, --watch, --kind and --state do not apply; drop them")
        show_run(root, run, json_out=json_out)
        return
    if json_out or not watch:
        show(root, kind=kind, state=state, json_out=json_out)
        return
    from rich.live import Live

    from hcli.status import status_rows

    def table() -> "Table":
        return _status_table(status_rows(root, kind=kind, state=state), root)

    with Live(table(), refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(5)
                live.update(table())
        except KeyboardInterrupt:
            pass


def _status_table(rows: list[dict], root: Path) -> "Table":
    """The rich table `--watch` refreshes in place."""
    from rich.table import Table

    from hcli.cli._status_view import COLUMNS, STATE_STYLE, cells

    table = Table(title=f"runs in {root}", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, no_wrap=col in ("run id", "job"))
    for r in rows:
        row = cells(r)
        style = STATE_STYLE.get(r["state"], "")
        row[3] = f"[{style}]{row[3]}[/]" if style else row[3]
        table.add_row(*row)
    return table


def logs(
    run: RunArg,
    err: Annotated[bool, typer.Option("--err", help="stderr instead of stdout.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing as it grows.")
    ] = False,
    runs_dir: RunsDir = None,
) -> None:
    """Print a run's job log (the current job's; SLURM or local)."""
    from hcli.errors import RunError
    from hcli.runs import find_run, resolve_runs_dir

    r = find_run(resolve_runs_dir(runs_dir), run)
    path = _log_path(r, err)
    if path is None:
        raise RunError(
            f"run {r.run_id} has no {'stderr' if err else 'stdout'} log yet; "
            "it may still be queued (hcli status)"
        )
    with open(path, errors="replace") as fh:
        sys.stdout.write(fh.read())
        sys.stdout.flush()
        while follow:
            chunk = fh.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(1)


def _log_path(run, err: bool) -> Path | None:
    from hcli.status import log_files

    jobs = run.state().get("jobs") or []
    found = log_files(run.logs, jobs[-1] if jobs else {})["stderr" if err else "stdout"]
    return Path(found) if found else None


def cancel(
    run: RunArg,
    runs_dir: RunsDir = None,
) -> None:
    """Cancel a run's job; its checkpoints stay, and `hcli resume` continues it later."""
    from hcli.errors import RunError
    from hcli.runs import ACTIVE_STATES, find_run, resolve_runs_dir, run_lock
    from hcli.scheduler import cancel_job

    root = resolve_runs_dir(runs_dir)
    r = find_run(root, run)
    with run_lock(root, r.run_id):
        state = r.state()
        if state["state"] not in ACTIVE_STATES:
            raise RunError(f"run {r.run_id} is {state['state']}; there is nothing to cancel")
        job = r.job_id
        # Mark first: the job, receiving SIGTERM, reads this and saves without requeueing.
        r.update_state(state="CANCELLED", message="cancelled by hcli cancel")
    if job and job != "foreground":
        cancel_job(job)
    typer.echo(f"{r.run_id}: cancelled (job {job}); `hcli resume {r.run_id}` continues it")


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("resume")(resume)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
