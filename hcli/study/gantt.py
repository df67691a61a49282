"""The plan as a figure: one bar per run on the device lane it is scheduled on, one colour per
stage, with the critical path's stages named in the title."""

from __future__ import annotations

from pathlib import Path

from hcli.study.plan import PlanResult

__all__ = ["draw_gantt"]


def draw_gantt(plan: PlanResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = 3600.0
    unit, scale = ("hours", hours) if plan.wall_s >= 2 * hours else ("minutes", 60.0)
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.35 * plan.gpus))
    for i, stage in enumerate(plan.stages):
        for run in stage.runs:
            ax.barh(run.slot, run.total_s / scale, left=run.start_s / scale, height=0.8,
                    color=colours(i % 10), edgecolor="white", linewidth=0.5,
                    label=stage.stage if run is stage.runs[0] else None)
    ax.set_xlabel(f"{unit} from submission (queue waits not modelled)")
    ax.set_ylabel("device")
    ax.set_yticks(range(plan.gpus))
    ax.invert_yaxis()
    ax.set_title(f"{plan.study}: {plan.wall_s / hours:.2f} h on {plan.gpus} device(s), "
                 f"{plan.device_hours:.1f} device-h; critical path "
                 f"{' → '.join(plan.critical_path)} ({plan.critical_s / hours:.2f} h)", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
