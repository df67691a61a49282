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

    memo: dict = {}  # a sweep's runs share their checks (one per distinct data, fold, weights)
    for p in planned:
        state = (read_json(root / p.run_id / "state.json") or {}).get("state")
        if state in ACTIVE_STATES or (state == "COMPLETED" and not force):
            continue  # nothing will be queued for it (submit_runs says why)
        try:
            preflight(p.spec, root, slurm=slurm, memo=memo)
        except UserError as exc:
            if not dry_run:
                if len(planned) > 1:  # say which run of the sweep; nothing of it is queued
                    raise type(exc)(f"{p.run_id}: {exc}") from None
                raise
            echo_err(f"warning: {p.run_id} would not be queued: {exc}")


def submit(
    kind: Annotated[str, typer.Argument(
        help="probe | multiclass | mae | meta | adapt, or pipeline (a study file's stages)")],
    study: Annotated[str | None, typer.Argument(
        help="pipeline: the study file (a path or a name in configs/)", show_default=False)]
    = None,
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
    from_runs: Annotated[
        str | None,
        typer.Option("--from", help="adapt: the trained runs to adapt, RUN[,RUN...] (each "
                     "× -o adapt.shots × -o seed is one task of one array)."),
    ] = None,
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

    if kind == "pipeline":
        from hcli.cli.study import submit_pipeline_cmd

        if config or backbone or override or force or after or max_parallel or from_runs:
            raise UserError("hcli submit pipeline takes its stages from the study file; only "
                            "--cluster/--local, --dry-run, --json and --runs-dir apply")
        if not study:
            raise UserError("hcli submit pipeline needs a study file: hcli submit pipeline "
                            "configs/study_poc6.yaml")
        submit_pipeline_cmd(
            study, mode="slurm" if dry_run and not local else _mode(cluster, local, foreground),
            dry_run=dry_run, json_out=json_out, root=resolve_runs_dir(runs_dir),
            check=_check_before_queueing,
        )
        return
    if study is not None:
        raise UserError(f"unexpected argument {study!r}: `hcli submit {kind}` takes a config "
                        "with --config")
    if kind not in all_kinds():
        raise UserError(f"unknown kind {kind!r}; use one of {', '.join(all_kinds())}, "
                        "or pipeline")
    if kind not in implemented_kinds():
        raise UserError(
            f"kind {kind!r} is specified (`hcli spec show --kind {kind}`) but has no job yet; "
            f"runnable kinds: {', '.join(implemented_kinds())}"
        )
    root = resolve_runs_dir(runs_dir)
    if skip_checks:
        # Into the spec (execution-only: the run id stays), so the job knows to check at start.
        override = [*(override or []), "slurm.skip_checks=true"]
    mode: Mode = (
        "slurm" if dry_run and not (local or foreground) else _mode(cluster, local, foreground)
    )
    if kind == "adapt" or from_runs:
        planned, after = _plan_adapt(kind, from_runs, config, backbone, override, root, after,
                                     wait=mode == "slurm" or dry_run)
    else:
        planned = plan_runs(kind, config=config, backbones=_split_csv(backbone),
                            overrides=override)
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
            entries = [
                {
                    "run_id": o.run_id,
                    "action": o.action,
                    "state": o.state,
                    "job_id": o.job_id,
                    "run_dir": str(o.run_dir),
                    **(
                        {"spec": o.spec, "sbatch": o.sbatch, "task": o.task, "note": o.note}
                        if dry_run
                        else {}
                    ),
                }
                for o in outcomes
            ]
            print_json({"runs": entries, **_dry_run_arrays(outcomes)} if dry_run else entries)
    else:
        _print_outcomes(outcomes, dry_run)
    if mode == "foreground" and not dry_run:
        _run_foreground([o for o in outcomes if o.action == "submitted"])


def _submissions(outcomes: list) -> list:
    """The distinct array plans of a dry run's outcomes, in submission order."""
    plans: list = []
    for o in outcomes:
        if o.array is not None and all(o.array is not p for p in plans):
            plans.append(o.array)
    return plans


def _dry_run_arrays(outcomes: list) -> dict:
    """A sweep's dry run in JSON: each sbatch submission with its script and task → run id."""
    plans = _submissions(outcomes)
    return {
        "max_array_size": (
            {"value": plans[0].max_array_size, "from": plans[0].max_array_size_from}
            if plans
            else None
        ),
        "arrays": [
            {
                "job_name": plan.job_name,
                "folder": str(plan.folder),
                "array": plan.array_range(),
                "tasks": {str(i): m.run_id for i, m in enumerate(plan.members)},
                "sbatch": plan.sbatch,
            }
            for plan in plans
        ],
        "skipped": {o.run_id: o.note for o in outcomes if o.action in ("exists", "refused")},
    }


def _print_dry_run_sweep(outcomes: list) -> None:
    plans = _submissions(outcomes)
    queued = sum(len(p.members) for p in plans)
    skipped = [o for o in outcomes if o.action in ("exists", "refused")]
    typer.echo(
        f"# sweep of {len(outcomes)} runs: {queued} to submit in {len(plans)} sbatch "
        f"submission(s), {len(skipped)} skipped"
    )
    if plans:
        typer.echo(f"# MaxArraySize {plans[0].max_array_size} ({plans[0].max_array_size_from})")
    for n, plan in enumerate(plans, 1):
        what = (
            f"array {plan.array_range()} ({len(plan.members)} tasks, at most "
            f"{min(len(plan.members), plan.parallelism or len(plan.members))} at once)"
            if plan.is_array
            else "one job"
        )
        typer.echo(f"\n# === submission {n} of {len(plans)}: {what}, job name {plan.job_name}")
        typer.echo(f"# submitit folder (job logs): {plan.folder}")
        typer.echo("# task  run id  (run folder)")
        for i, m in enumerate(plan.members):
            o = next(o for o in outcomes if o.run_id == m.run_id)
            typer.echo(f"# {i if plan.is_array else '-':>4}  {m.run_id}  ({o.run_dir})")
        typer.echo("# --- sbatch script ---")
        typer.echo(plan.sbatch)
    if skipped:
        typer.echo("\n# === not submitted ===")
        for o in skipped:
            typer.echo(f"# {o.run_id}: {o.note}  ({o.run_dir})")
    typer.echo("\n# each run's resolved spec: the same command with --json")


def _plan_adapt(kind: str, from_runs: str | None, config: str | None, backbone: str | None,
                overrides: list[str] | None, root: Path, after: str | None,
                wait: bool) -> tuple[list, str | None]:
    """The adaptation runs of `--from` and what they wait for (sources not yet COMPLETED)."""
    from hcli.errors import UserError
    from hcli.launch._plan import plan_adapt
    from hcli.runs import find_run

    if kind != "adapt":
        raise UserError(f"--from is for `hcli submit adapt`; `hcli submit {kind}` takes none")
    sources = _split_csv(from_runs)
    if not sources:
        raise UserError("hcli submit adapt needs --from RUN[,RUN...]: the leave-one-domain-out "
                        "runs (meta or multiclass) to adapt")
    if config or backbone:
        raise UserError("--config and --backbone do not apply to adapt: each run takes its "
                        "source's spec; set adapt.* and seed with -o")
    planned = plan_adapt(sources, root, overrides=overrides)
    pending = [s for s in sources if find_run(root, s).state().get("state") != "COMPLETED"]
    if pending and not wait:
        raise UserError(f"source {pending[0]} has not finished, and only SLURM can wait for it "
                        "(afterok); submit with --cluster, or once it has finished")
    return planned, ",".join([*(_split_csv(after) or []), *pending]) or None


def _print_outcomes(outcomes: list, dry_run: bool) -> None:
    if dry_run and (len(outcomes) > 1 or any(o.action != "dry-run" for o in outcomes)):
        _print_dry_run_sweep(outcomes)
        return
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
            help="One run in detail: id, unique prefix or path. With *, ? or [ (quoted): a glob "
            "on run ids, listing the runs it matches.",
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
    since: Annotated[
        str | None,
        typer.Option("--since", help="Show runs that ended within this long (30m, 24h, 7d); "
                     "default 24h for the table, every run for --json.", show_default=False),
    ] = None,
    all_runs: Annotated[
        bool, typer.Option("--all", help="Every run, however long ago it ended.")
    ] = False,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="A submitted pipeline's runs (every one, "
                                 "however old), grouped by stage.", show_default=False)
    ] = None,
    runs_dir: RunsDir = None,
) -> None:
    """Active runs and those that ended in the last 24 h (--since, --all), each with its state,
    job, restarts, progress, latest metric, ETA, heartbeat age and, for failed, cancelled, stale
    and requeued runs, why. With RUN: that run in detail (jobs, node-hours, requeues,
    checkpoints, metrics, files, and the command that continues it)."""
    # `hcli.cli._fast` answers the common forms of this command without typer; what it does
    # not take (`--watch`, `--help`, a RUN, anything unusual) comes here.
    from hcli.cli._status_view import hidden_line, show, show_run, window
    from hcli.runs import resolve_runs_dir
    from hcli.status import is_pattern

    root = resolve_runs_dir(runs_dir)
    if pipeline is not None:
        from hcli.errors import UserError

        if run is not None or watch or since or all_runs:
            raise UserError("--pipeline shows every run of the pipeline; drop RUN, --watch, "
                            "--since and --all (--kind and --state apply)")
        from hcli.cli._pipeline_view import show_pipeline

        show_pipeline(root, pipeline, kind=kind, state=state, json_out=json_out)
        return
    pattern = run if run is not None and is_pattern(run) else None
    if run is not None and pattern is None:
        from hcli.errors import UserError

        if watch or kind or state or since or all_runs:
            raise UserError("with a RUN, --watch, --kind, --state, --since and --all do not "
                            "apply; drop them (or quote a glob such as 'multiclass-*')")
        show_run(root, run, json_out=json_out)
        return
    if json_out or not watch:
        show(root, kind=kind, state=state, json_out=json_out, pattern=pattern, since=since,
             all_runs=all_runs)
        return
    from rich.live import Live

    from hcli.status import select_rows

    text, since_s = window(since, all_runs, json_out)

    def table() -> "Table":
        rows, hidden = select_rows(root, kind=kind, state=state, pattern=pattern,
                                   since_s=since_s)
        return _status_table(rows, root, hidden_line(hidden, text) if hidden else None)

    with Live(table(), refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(5)
                live.update(table())
        except KeyboardInterrupt:
            pass


def _status_table(rows: list[dict], root: Path, caption: str | None = None) -> "Table":
    """The rich table `--watch` refreshes in place."""
    from rich.table import Table

    from hcli.cli._status_view import COLUMNS, STATE_STYLE, cells

    table = Table(title=f"runs in {root}", title_justify="left", caption=caption,
                  caption_justify="left")
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
        # Mark first: the job, receiving SIGTERM, reads this and saves without requeueing (and
        # replaces this message with the step it saved at), or does not start at all.
        r.update_state(state="CANCELLED", message=_cancel_message(r, state))
    if job and job != "foreground":
        cancel_job(job)
    from hcli.study._pipeline import block_dependants

    blocked = block_dependants(root, r.run_id, "CANCELLED")
    typer.echo(f"{r.run_id}: cancelled (job {job}); `hcli resume {r.run_id}` continues it"
               + (f"; {len(blocked)} pipeline runs waiting for it are BLOCKED" if blocked else ""))


def _cancel_message(run, state: dict) -> str:
    """What `hcli cancel` records; true even if the job is killed before it can save."""
    if state["state"] == "PENDING":
        return f"cancelled by hcli cancel before it started; `hcli resume {run.run_id}` starts it"
    done = sorted(run.checkpoints.glob("step-*.pt.done"))
    newest = f"step {int(done[-1].name[5:13])}" if done else "none yet"
    doing = "while running; the job saves as it stops" if state["state"] == "RUNNING" else (
        "while waiting to be requeued"
    )
    return (
        f"cancelled by hcli cancel {doing} (newest complete checkpoint then: {newest}); "
        f"`hcli resume {run.run_id}` continues from the newest"
    )


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("resume")(resume)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
