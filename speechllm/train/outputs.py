"""What a training run leaves in its folder besides checkpoints: metrics JSON and the loss curve.

Trainer's log history uses flat names (`loss`, `learning_rate`, `train_runtime`); the files written
here use the project's slash names (`train/loss`, `train/learning_rate`, `train/runtime`), the same
keys TensorBoard shows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def metric_name(key: str) -> str:
    """`loss` -> `train/loss`, `train_runtime` -> `train/runtime`; names with a slash are kept."""
    if "/" in key:
        return key
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    return "train/" + (key[len("train_") :] if key.startswith("train_") else key)


def split_history(log_history: list[dict]) -> tuple[list[dict], dict]:
    """Per-step training logs and the end-of-training summary from `TrainerState.log_history`.

    Args:
        log_history: Trainer's list of logged dicts (each has `step`).

    Returns:
        (steps: [{"step": n, "train/loss": ..., ...}] in step order, one entry per step (a resumed
        run's repeated entries are collapsed to the newest), summary: the last `train_runtime` entry
        in slash names).
    """
    steps: dict[int, dict] = {}
    summary: dict = {}
    for entry in log_history:
        if "train_runtime" in entry:
            summary = {metric_name(k): v for k, v in entry.items() if k != "step"}
            summary["train/global_step"] = entry.get("step")
            continue
        if "loss" not in entry:
            continue
        steps[int(entry["step"])] = {"step": int(entry["step"])} | {
            metric_name(k): v for k, v in entry.items() if k != "step"
        }
    return [steps[k] for k in sorted(steps)], summary


def write_metrics(path: Path, log_history: list[dict], extra: dict) -> dict:
    """Write `train_metrics.json`.

    Args:
        path: the output file.
        log_history: Trainer's log history.
        extra: more top-level entries (mixture composition, parameter counts, ...).

    Returns:
        The written object: {"steps": [...], "summary": {...}, **extra}.
    """
    steps, summary = split_history(log_history)
    data = {"steps": steps, "summary": summary, **extra}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return data


def plot_loss(path: Path, steps: list[dict], title: str = "training loss") -> None:
    """Save the loss (and learning rate, on a second axis) against the step as a PNG.

    Args:
        path: the PNG file.
        steps: per-step entries from :func:`split_history`.
        title: plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s["step"] for s in steps if isinstance(s.get("train/loss"), int | float)]
    ys = [s["train/loss"] for s in steps if isinstance(s.get("train/loss"), int | float)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label="train/loss")
    # A moving average makes the trend readable when per-step losses are noisy.
    if len(ys) >= 20:
        k = max(5, len(ys) // 20)
        smooth = [
            sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))
        ]
        ax.plot(xs, smooth, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20 and all(math.isfinite(y) for y in ys):
        ax.set_yscale("log")
    lrs = [(s["step"], s["train/learning_rate"]) for s in steps if "train/learning_rate" in s]
    if lrs:
        ax2 = ax.twinx()
        ax2.plot([a for a, _ in lrs], [b for _, b in lrs], color="gray", alpha=0.4, linewidth=1)
        ax2.set_ylabel("learning rate", color="gray")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curve(
    path: Path, history: list[dict], chance: dict[str, float], title: str = "listening probe"
) -> None:
    """Save each attribute's probe balanced accuracy against the step, with its chance level dashed.

    Args:
        path: the PNG file.
        history: [{"step": n, "<task>": balanced accuracy, ...}] (from the probe callback).
        chance: task -> chance level (1/classes).
        title: plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, task in enumerate(sorted(chance)):
        color = f"C{i}"
        points = [(h["step"], h[task]) for h in history if task in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=task)
        ax.axhline(chance[task], color=color, linestyle="--", linewidth=0.8, alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("balanced accuracy (held-out clips, unseen questions)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title} (dashed: chance)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
