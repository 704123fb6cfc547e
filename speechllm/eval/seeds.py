"""One table over several training seeds: a result is a distribution, not a run.

A short training run on CPU can hear on one seed and not on the next (another adapter initialisation,
instruction draw and batch order), and one machine's arithmetic differs slightly from another's. So the
demo's headline is the mean and spread over seeds of each task's balanced accuracy, beside every seed's
own score and its 95% interval, read from each seed's `report.json`.

Usage:
    python -m speechllm.eval.seeds runs/demo/evaluate runs/demo/seed-1/evaluate runs/demo/seed-2/evaluate \\
        [--out runs/demo/seeds]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping
from pathlib import Path

# A task counts as heard when its balanced accuracy is at least this far above 1/classes.
HEARD_MARGIN = 0.10


def summarize(reports: Mapping[str, dict]) -> dict:
    """Per task, the balanced accuracy of each run and their mean, standard deviation, min and max.

    Args:
        reports: run name (e.g. "seed 1") -> its `report.json` contents.

    Returns:
        {"runs": [names], "tasks": {task: {"per_run": {name: value}, "ci": {name: [lo, hi]}, "n": {name: n},
        "chance": 1/classes, "mean", "sd", "min", "max"}}, "heard": {name: [tasks at chance + 0.10 or more]},
        "learned" and "retention": {"per_run", "mean", "sd"}}. Content (word accuracy) is listed with
        accuracy instead of balanced accuracy and is not counted in "heard".
    """
    if not reports:
        raise ValueError("no evaluation reports to summarize")
    names = list(reports)
    tasks: dict[str, dict] = {}
    for name, report in reports.items():
        for task, u in report.get("unseen", {}).items():
            value = u.get("balanced_accuracy", u.get("accuracy"))
            entry = tasks.setdefault(
                task, {"per_run": {}, "ci": {}, "n": {}, "chance": u.get("chance_uniform")}
            )
            entry["per_run"][name] = value
            entry["ci"][name] = u.get("balanced_accuracy_ci")
            entry["n"][name] = u.get("n")
    for entry in tasks.values():
        entry.update(_spread(list(entry["per_run"].values())))
    heard = {
        name: [
            t for t, e in tasks.items()
            if e["chance"] and name in e["per_run"] and e["per_run"][name] >= e["chance"] + HEARD_MARGIN - 1e-9
        ]
        for name in names
    }  # fmt: skip
    out = {"runs": names, "tasks": tasks, "heard": heard}
    for key in ("learned", "retention"):
        values = {n: r.get("summary", {}).get(key) for n, r in reports.items()}
        present = [v for v in values.values() if v is not None]
        out[key] = {"per_run": values, **(_spread(present) if present else {})}
    return out


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def render_markdown(summary: dict) -> str:
    """The summary as a markdown table: one row per task, mean ± sd, then each run's score [95% interval]."""
    names = summary["runs"]
    lines = [
        f"Balanced accuracy on unseen questions over {len(names)} runs (content: word accuracy); mean ± "
        "standard deviation across runs, min-max, then each run's score with its 95% interval over clips.",
        "",
        "| task | n per run | 1/classes | mean ± sd | min-max | " + " | ".join(names) + " |",
        "|---|---|---|---|---|---|" + "---|" * (len(names) - 1),
    ]
    for task, e in summary["tasks"].items():
        ns = sorted({n for n in e["n"].values() if n is not None})
        cells = []
        for name in names:
            v, ci = e["per_run"].get(name), e["ci"].get(name)
            cells.append("–" if v is None else f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        chance = "–" if not e["chance"] else f"{e['chance']:.2f}"
        lines.append(
            f"| {task} | {'/'.join(map(str, ns))} | {chance} | {e['mean']:.2f} ± {e['sd']:.2f} | "
            f"{e['min']:.2f}-{e['max']:.2f} | " + " | ".join(cells) + " |"
        )
    for key, label in (("learned", "learned (mean balanced accuracy)"), ("retention", "retention score")):
        e = summary.get(key, {})
        if "mean" in e:
            cells = [("–" if e["per_run"].get(n) is None else f"{e['per_run'][n]:.2f}") for n in names]
            lines.append(f"| *{label}* | | | {e['mean']:.2f} ± {e['sd']:.2f} | {e['min']:.2f}-{e['max']:.2f} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", f"Tasks heard (balanced accuracy >= 1/classes + {HEARD_MARGIN:.2f}):", ""]
    lines += [f"- {name}: {len(t)} ({', '.join(t) or 'none'})" for name, t in summary["heard"].items()]
    return "\n".join(lines) + "\n"


def write(summary: dict, out: str | Path) -> tuple[Path, Path]:
    """Write `<out>.json` and `<out>.md`; returns their paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    js, md = out.with_suffix(".json"), out.with_suffix(".md")
    js.write_text(json.dumps(summary, indent=2))
    md.write_text(render_markdown(summary))
    return js, md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("evaluations", nargs="+", help="evaluation folders (each with a report.json)")
    parser.add_argument("--out", default="seeds", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    reports = {}
    for folder in args.evaluations:
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise SystemExit(f"{folder}: no report.json (run evaluate.py on its checkpoint first)")
        reports[folder] = json.loads(path.read_text())
    summary = summarize(reports)
    _, md = write(summary, args.out)
    print(md.read_text())


if __name__ == "__main__":
    main()
