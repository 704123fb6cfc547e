"""The learning-vs-forgetting plane across runs.

Usage:
    python -m speechllm.eval.plane RUN_DIR [RUN_DIR ...] [-o plane.png]

Each RUN_DIR holds a ``report.json`` written by evaluate.py (or is that file). Each run is a point:
x = what was learned (mean balanced accuracy on unseen questions over the attribute tasks), y = what
was kept (the retention score of ``speechllm.eval.retention.retention_score``: 1 = nothing forgotten).
The untrained baseline of each run is drawn as a hollow marker joined to it, so the arrow shows what
training moved. The seed finding (BACKGROUND.md) is that plain fine-tuning runs slide down and right;
methods that learn without forgetting sit in the top right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_report(path: str) -> dict:
    """Read a report.json, given the file or the folder holding it.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    file = os.path.join(path, "report.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no report.json at {file!r}; run evaluate.py with that output dir first")
    with open(file) as f:
        return json.load(f)


def plane_points(report: dict) -> dict:
    """The plane coordinates of a run and of its untrained baseline.

    Args:
        report: a report.json dict.

    Returns:
        {"x", "y", "x_base", "y_base"}: what the trained model learned and kept (the report's
        ``summary.learned`` and ``summary.retention``) and the same for the adapter at initialisation.
        x_base and y_base are None when the evaluation ran no baseline.
    """
    summary = report.get("summary", {})
    base_x, base_y = summary.get("baseline_learned"), summary.get("baseline_retention")
    return {
        "x": float(summary.get("learned") or 0.0),
        "y": float(summary.get("retention") or 0.0),
        "x_base": None if base_x is None else float(base_x),
        "y_base": None if base_x is None or base_y is None else float(base_y),
    }


def plot_plane(run_dirs: Sequence[str], out_path: str, labels: Sequence[str] | None = None) -> str:
    """Plot runs on the learning-vs-forgetting plane.

    Args:
        run_dirs: folders holding report.json (or the files).
        out_path: PNG path to write.
        labels: point labels (default: each folder's name).

    Returns:
        `out_path`.
    """
    if not run_dirs:
        raise ValueError("plot_plane needs at least one run directory")
    reports = [load_report(d) for d in run_dirs]
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, (rep, label) in enumerate(zip(reports, labels, strict=True)):
        p = plane_points(rep)
        color = f"C{i % 10}"
        if p["x_base"] is not None and p["y_base"] is not None:
            ax.annotate(
                "",
                xy=(p["x"], p["y"]),
                xytext=(p["x_base"], p["y_base"]),
                arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.5},
            )
            ax.scatter([p["x_base"]], [p["y_base"]], facecolors="none", edgecolors=color, s=40)
        ax.scatter([p["x"]], [p["y"]], color=color, s=50, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(bottom=0)
    return save_plane(fig, ax, out_path, "Learning vs forgetting (hollow: untrained adapter)")


def save_plane(fig, ax, out_path: str | os.PathLike, title: str) -> str:
    """Label the plane's axes as every plane plot does (evaluation runs, the study's variants), and save it."""
    ax.set_xlabel("learned: mean balanced accuracy on unseen questions")
    ax.set_ylabel("kept: retention score (1 = the base LLM)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return str(out_path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: plot the plane for the given run folders."""
    parser = argparse.ArgumentParser(description="Plot runs on the learning-vs-forgetting plane.")
    parser.add_argument("runs", nargs="+", help="folders holding report.json")
    parser.add_argument("-o", "--out", default="plane.png", help="PNG to write (default: plane.png)")
    args = parser.parse_args(argv)
    try:
        path = plot_plane(args.runs, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in args.runs:
        p = plane_points(load_report(d))
        base = (
            "no baseline" if p["x_base"] is None else f"untrained: {p['x_base']:.3f}, {p['y_base'] or 0:.3f}"
        )
        print(f"{d}: learned={p['x']:.3f} retention={p['y']:.3f} ({base})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
