"""`make study`: learning vs forgetting, measured on the demo's speech model.

    prepare each variant's targets -> per variant: train -> evaluate -> study/report.md, plane.png, results.json

A variant is a config in `conf/study/`: `verified` is the reference (the demo's training for one epoch:
verified self-output, LoRA, 5% replay) and every other variant changes one thing (the targets, the LLM
policy, replay, token filtering, the training length). All run on the same prepared data and seed, and
are evaluated alike: learning on unseen questions (every held-out clip), retention as the text LLM's
drift, agreement, refusals and format following (`speechllm.eval.retention`). The same runs as a Hydra
multirun, without this module's reuse and report:

    python train.py -m experiment=demo study=verified,label,frozen prepare_missing=true
    python evaluate.py -m checkpoint=multirun/train/DATE/0/checkpoints/final,... eval.max_clips=null
    python -m speechllm.eval.plane multirun/evaluate/DATE/*

A rerun reuses every finished step whose command and code are unchanged (as `make demo` does), so a
killed study picks up at the variant it was in.

Usage:
    python -m speechllm.study [--out study] [--data-dir data] [--variants verified,label] [-- overrides]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

from speechllm.config import CONF_DIR
from speechllm.data.stage import read_json
from speechllm.eval.plane import save_plane
from speechllm.eval.scoring import learned_score
from speechllm.steps import (
    REPO,
    is_fresh,
    newest_mtime,
    prepare_command_for,
    run_recorded,
    run_step,
    sources_digest,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The designed set, in run order: each after the reference changes one thing.
VARIANTS: dict[str, str] = {
    "verified": "reference: verified self-output, LoRA, 5% replay, 1 epoch",
    "self_output": "raw self-output (unverified)",
    "label": "templated gold answers (human-style labels)",
    "paraphrase": "gold answers paraphrased by the LLM, verified",
    "label_filtered": "labels + token filtering (p < 0.4 masked)",
    "frozen": "LLM frozen (adapter only)",
    "no_replay": "no text replay",
    "long": "3 epochs instead of 1",
    "opd": "on-policy distillation: own samples, reverse KL to the LLM reading the description",
    "grpo": "GRPO: own samples rewarded against the labels, KL to the model without LoRA",
    "grpo_no_kl": "GRPO without its KL penalty",
}

# Evaluation settings of every variant: all held-out clips; the format measure on 8 clips (120 requests
# per side); drift measured even for a frozen LLM, where it must come out as none.
EVAL_ARGS = ["eval.max_clips=null", "eval.retention.max_clips=8", "eval.retention.drift=true"]


@dataclass(frozen=True)
class Claim:
    """A claim of the background literature, as a comparison of two variants on one axis.

    Attributes:
        text: the claim.
        measure: "learned" or "kept".
        higher: the variant the claim expects to score higher.
        lower: the variant it expects to score lower.
    """

    text: str
    measure: str
    higher: str
    lower: str


CLAIMS = [
    Claim("Training on the LLM's own words forgets less than on human-style labels", "kept", "verified", "label"),
    Claim("Gold answers paraphrased by the LLM forget less than the labels themselves", "kept", "paraphrase", "label"),
    Claim("Verified self-output learns more than raw self-output", "learned", "verified", "self_output"),
    Claim("Token filtering forgets less", "kept", "label_filtered", "label"),
    Claim("A few percent of text replay forgets less", "kept", "verified", "no_replay"),
    Claim("A frozen LLM forgets less than a LoRA-tuned one", "kept", "frozen", "verified"),
    Claim("Tuning the LLM (LoRA) learns more than a frozen LLM", "learned", "verified", "frozen"),
    Claim("Training longer learns more", "learned", "long", "verified"),
    Claim("Training longer forgets more", "kept", "verified", "long"),
    Claim("On-policy distillation forgets less than off-policy verified self-output", "kept", "opd", "verified"),
    Claim("GRPO forgets less than verified self-output (SFT)", "kept", "grpo", "verified"),
    Claim("On-policy distillation moves less from the base on its own task (KL)", "task_kl", "verified", "opd"),
    Claim("GRPO moves less from the base on its own task (KL)", "task_kl", "verified", "grpo"),
    Claim("GRPO's KL penalty forgets less", "kept", "grpo", "grpo_no_kl"),
]  # fmt: skip

# A verdict is "settled" only beyond two standard errors with at least this many seeds behind each side.
SETTLED_SEEDS = 3


def verdict(claim: Claim, results: dict[str, dict]) -> dict:
    """Whether the study's numbers support a claim, given the seeds and the counts behind them.

    Returns:
        {"claim", "measure", "higher", "lower", "difference", "se", "seeds", "verdict"}: difference = higher -
        lower on the measure (means over seeds); se its standard error (:func:`mean_and_se` per side).
        Beyond 2 se the verdict is "settled for" / "settled against" when both sides have at least
        SETTLED_SEEDS seeds, else "for, unsettled" / "against, unsettled"; "leans for" / "leans against"
        beyond 1 se; "not separated" within 1; "not run" when a variant or its measure is missing.
    """
    out = {"claim": claim.text, "measure": claim.measure, "higher": claim.higher, "lower": claim.lower}
    a, b = results.get(claim.higher), results.get(claim.lower)
    if a is None or b is None or a.get(claim.measure) is None or b.get(claim.measure) is None:
        return {**out, "difference": None, "se": None, "seeds": None, "verdict": "not run"}
    diff = a[claim.measure] - b[claim.measure]
    se = math.hypot(a.get(f"{claim.measure}_se") or 0.0, b.get(f"{claim.measure}_se") or 0.0)
    z = diff / se if se > 0 else (math.copysign(math.inf, diff) if diff else 0.0)
    seeds = min(len(a.get("seeds") or [0]), len(b.get("seeds") or [0]))
    enough = seeds >= SETTLED_SEEDS
    if abs(z) > 2:
        word = ("settled " if enough else "") + ("for" if z > 0 else "against") + ("" if enough else ", unsettled")
    elif abs(z) > 1:
        word = "leans for" if z > 0 else "leans against"
    else:
        word = "not separated"
    return {**out, "difference": diff, "se": se, "seeds": seeds, "verdict": word}


def mean_and_se(values: list[float], run_ses: list[float | None]) -> dict:
    """A measure over seeds: its mean, the spread across seeds, and the standard error of the mean.

    The standard error takes the larger of the two noises it could be: the spread across seeds (which
    holds run-to-run and measurement noise, but is itself uncertain with few seeds) and the runs' own
    measurement noise (the counts behind each number); with one seed only the latter is known.

    Returns:
        {"mean", "sd" (None for one seed), "se"}.
    """
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    measured = [x for x in run_ses if x is not None]
    within = math.sqrt(sum(x * x for x in measured) / len(measured)) if measured else 0.0
    return {"mean": mean, "sd": sd, "se": max(sd or 0.0, within) / math.sqrt(n)}


def _mean_tree(values: list):
    """The element-wise mean of equally shaped dicts of numbers (None where any run lacks a number)."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean_tree([v.get(k) if isinstance(v, dict) else None for v in values]) for k in first}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values) / len(values)
    return first if all(v == first for v in values) else None


def combine_seeds(runs: dict[int, dict]) -> dict:
    """One variant's row over its seeds: every number the mean over seeds, and `learned`, `kept` and
    `task_kl` with their spread and standard error (:func:`mean_and_se`); `per_seed` keeps each run's."""
    seeds = sorted(runs)
    row = _mean_tree([runs[s] for s in seeds])
    row["seeds"] = seeds
    row["per_seed"] = {str(s): {m: runs[s].get(m) for m in ("learned", "kept", "task_kl")} for s in seeds}
    for measure in ("learned", "kept", "task_kl"):
        values = [runs[s].get(measure) for s in seeds]
        if any(v is None for v in values):
            row[measure], row[f"{measure}_sd"], row[f"{measure}_se"] = None, None, None
            continue
        stats = mean_and_se(values, [runs[s].get(f"{measure}_se") for s in seeds])
        row[measure], row[f"{measure}_sd"], row[f"{measure}_se"] = stats["mean"], stats["sd"], stats["se"]
    return row


def _binomial_var(p: float, n: int) -> float:
    return p * (1 - p) / n if n else 0.0


def standard_errors(tasks: dict[str, dict], fmt: dict, drift: dict | None, parts: dict) -> dict:
    """Sampling standard errors of `learned` and `kept` from the counts behind them.

    learned is a mean over tasks of balanced accuracies on n answers each (binomial variance per task);
    kept is a mean of parts: the format part is the speech rate over n requests divided by the text rate
    (the same stored answers in every variant, so a constant of any comparison), the agreement part a
    share of the base's answer tokens (exact for a frozen LLM).
    """
    learned = math.sqrt(sum(_binomial_var(t["balanced"], t["n"]) for t in tasks.values())) / max(
        1, len(tasks)
    )
    variances = []
    if "format" in parts and fmt.get("n") and fmt.get("text"):
        variances.append(_binomial_var(fmt["speech"], fmt["n"]) / fmt["text"] ** 2)
    if "agreement" in parts:
        variances.append(_binomial_var(drift["agreement"], drift["n_tokens"]) if drift else 0.0)
    kept = math.sqrt(sum(variances)) / len(variances) if variances else None
    return {"learned_se": learned, "kept_se": kept}


def variant_result(report: dict, train_dir: Path) -> dict:
    """One variant's row: what it learned and kept (from its report.json), with the n behind each."""
    summ = report.get("summary", {})
    ret = report.get("retention", {})
    fmt, drift = ret.get("format", {}), ret.get("drift", {})
    attributes = {t: u for t, u in report.get("unseen", {}).items() if "balanced_accuracy" in u}
    metrics = read_json(train_dir / "train_metrics.json") or {}
    steps = [s for s in metrics.get("steps", []) if "train/loss" in s]
    measured = bool(drift) and "skipped" not in drift
    tasks = {
        t: {"balanced": u["balanced_accuracy"], "n": u["n"], "chance": u["chance_uniform"]}
        for t, u in attributes.items()
    }
    drift_numbers = {k: drift.get(k) for k in ("kl", "ppl_tuned", "ppl_base", "agreement", "n_tokens")}
    parts = summ.get("retention_parts", {})
    fmt_numbers = {"speech": fmt.get("speech"), "text": fmt.get("text"), "n": fmt.get("n")}

    def by_model(key: str) -> dict | None:
        return {w: drift.get(w, {}).get(key) for w in ("base", "tuned")} if measured else None

    task_kl = metrics.get("task_kl") or {}
    return {
        "learned": summ.get("learned"),
        "kept": summ.get("retention"),
        **standard_errors(tasks, fmt_numbers, drift_numbers if measured else None, parts),
        "task_kl": task_kl.get("mean"),
        "task_kl_se": task_kl.get("se"),
        "kept_parts": parts,
        "tasks": tasks,
        "chance": sum(u["chance_uniform"] for u in attributes.values()) / max(1, len(attributes)),
        "format": fmt_numbers,
        "drift": drift_numbers if measured else None,
        "refusal_harmful": by_model("refusal_harmful"),
        "json_valid": by_model("json_valid"),
        "steps": steps[-1]["step"] if steps else None,
        "final_loss": steps[-1]["train/loss"] if steps else None,
        "anchors": {
            "untrained": {"learned": summ.get("baseline_learned"), "kept": summ.get("baseline_retention")},
            "base_llm": {"learned": learned_score(report.get("ceiling", {})), "kept": 1.0},
        },
    }


def _minutes(results: dict[str, dict]) -> str:
    seconds = [t for r in results.values() for t in r.get("seconds", {}).values()]
    return f"{sum(seconds) / 60:.0f}" if seconds else "–"


def _f(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_spread(r: dict, measure: str, digits: int) -> str:
    cell = f"**{_f(r.get(measure), digits)}** ± {_f(r.get(f'{measure}_se'), digits)}"
    sd = r.get(f"{measure}_sd")
    return cell + (f" (sd {_f(sd, digits)})" if sd is not None else "")


def render_report(results: dict[str, dict], claims: list[dict], meta: dict) -> str:
    """study/report.md: the variants' table, the anchors, and each claim's verdict with its numbers."""
    first = next(iter(results.values()))
    tasks = list(first["tasks"])
    n_task = first["tasks"][tasks[0]]["n"] if tasks else "?"
    seeds = sorted({s for r in results.values() for s in r.get("seeds") or [0]})
    lines = [
        "# Learning vs forgetting",
        "",
        f"{len(results)} variants of the demo's speech model, seeds {', '.join(map(str, seeds))} (a variant's "
        "numbers are means over its seeds; ± is the standard error of that mean, sd the spread across seeds), "
        "the same prepared data; "
        f"training and evaluation took {_minutes(results)} min (the seconds of each are in the table; the data preparation is not counted). **Learned**: mean balanced accuracy over the "
        f"attribute tasks on unseen questions (n = {n_task} per task, chance {_f(first['chance'])}). **Kept**: "
        "the retention score, the mean of the trained model's score over the base LLM's (each capped at 1) "
        "for format following with audio vs the text LLM reading the description (`format`), and the "
        "trained LLM's agreement with the base's own greedy answers on general prompts (`agreement`, "
        "text only); refusals count only when the base refuses some.",
        "",
        f"| variant | what changes | seeds | steps | train s | eval s | learned (n = {len(tasks)} x {n_task}, chance {_f(first['chance'])}) | "
        + " | ".join(f"{t} (chance {_f(first['tasks'][t]['chance'])})" for t in tasks)
        + f" | kept | format speech (text), n = {first['format']['n']} | agreement | KL | ppl of base answers "
        "| harmful refused | task KL |",
        "|---|---|---|---|---|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        d = r["drift"] or {}
        refused = r["refusal_harmful"] or {}
        seconds = r.get("seconds") or {}
        lines.append(
            f"| {name} | {VARIANTS.get(name, '')} | {len(r.get('seeds') or [0])} | {_f(r['steps'], 0)} | {_f(seconds.get('train'), 0)} | {_f(seconds.get('evaluate'), 0)} | {_with_spread(r, 'learned', 2)} | "
            + " | ".join(_f(r["tasks"].get(t, {}).get("balanced")) for t in tasks)
            + f" | {_with_spread(r, 'kept', 3)} | {_f(r['format']['speech'])} ({_f(r['format']['text'])}) | "
            f"{_f(d.get('agreement'), 3)} | {_f(d.get('kl'), 3)} | {_f(d.get('ppl_tuned'))} (base "
            f"{_f(d.get('ppl_base'))}) | {_f(refused.get('tuned'))} (base {_f(refused.get('base'))}) | "
            f"{_f(r.get('task_kl'), 3)} ± {_f(r.get('task_kl_se'), 3)} |"
        )
    anchors = first["anchors"]
    fmt_n = first["format"]["n"]
    agree_n = (first["drift"] or {}).get("n_tokens")
    lines += [
        "",
        f"Anchors: the untrained adapter learned {_f(anchors['untrained']['learned'])}, kept "
        f"{_f(anchors['untrained']['kept'], 3)}; the base LLM reading the gold description (the ceiling) "
        f"{_f(anchors['base_llm']['learned'])}, kept 1 by definition. n: format {fmt_n} requests per side, "
        f"agreement and KL over {agree_n} tokens of the base's answers to 12 prompts, 15 harmful requests. "
        "Task KL: KL(base LLM reading the description || trained model hearing the audio) per answer token on "
        "128 training rows (RL's Razor's measure of forgetting, on the task's own prompts).",
        "",
        "## The claims",
        "",
        "Each claim compares two variants on one axis. se is the standard error of the difference: per side, "
        "the larger of the spread across its seeds and its runs' own measurement noise (the counts behind "
        f"each number), over the square root of its seeds. Settled: beyond 2 se with {SETTLED_SEEDS} seeds or "
        "more on each side (unsettled with fewer); leans: beyond 1 se; not separated: within 1 se.",
        "",
        "| claim | measure | higher | lower | difference | se | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| {c['claim']} | {c['measure']} | {c['higher']} | {c['lower']} | "
            f"{_f(c['difference'], 3)} | {_f(c.get('se'), 3)} | {c.get('seeds') or '–'} | **{c['verdict']}** |"
        )
    lines += ["", "![plane](plane.png)", ""]
    return "\n".join(lines)


def plot_plane(results: dict[str, dict], path: Path) -> Path:
    """study/plane.png: one point per variant, the untrained adapter and the base LLM marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for i, (name, r) in enumerate(results.items()):
        if r["learned"] is None or r["kept"] is None:
            continue
        ax.errorbar([r["learned"]], [r["kept"]], xerr=r.get("learned_sd"), yerr=r.get("kept_sd"), fmt="o",
                    color=f"C{i % 10}", ms=7, capsize=3, label=name, zorder=3)  # fmt: skip
    anchors = next(iter(results.values()))["anchors"]
    u, b = anchors["untrained"], anchors["base_llm"]
    if u["learned"] is not None and u["kept"] is not None:
        ax.scatter([u["learned"]], [u["kept"]], marker="x", color="black", s=60, label="untrained adapter")
    if b["learned"] is not None:
        ax.scatter([b["learned"]], [1.0], marker="*", color="grey", s=140, label="base LLM (gold text)")
    chance = next(iter(results.values()))["chance"]
    ax.axvline(chance, color="grey", lw=0.8, ls=":", label=f"chance ({chance:.2f})")
    save_plane(fig, ax, path, "Learning vs forgetting (mean over seeds, bars: sd across seeds)")
    return path


def write_study(results: dict[str, dict], out: Path, meta: dict) -> dict:
    """Write results.json, report.md and plane.png under `out`; returns the results document."""
    claims = [verdict(c, results) for c in CLAIMS]
    doc = {"variants": results, "claims": claims, "meta": meta}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    (out / "report.md").write_text(render_report(results, claims, meta))
    plot_plane(results, out / "plane.png")
    return doc


def seed_dir(variant_dir: Path, seed: int) -> Path:
    """A variant's run folder for a seed: seed 0 in the variant's folder itself, seed s in `seed-s`."""
    return variant_dir if seed == 0 else variant_dir / f"seed-{seed}"


def _train_and_evaluate(v: str, seed: int, out: Path, data_dir: str, data_mtime: float, train_sources: str,
                        overrides: list[str]) -> tuple[dict, dict]:  # fmt: skip
    """Train and evaluate one variant under one seed, reusing each step when it is current.

    Returns:
        (the run's :func:`variant_result`, the seconds each step took when it ran).
    """
    python = sys.executable
    run = seed_dir(out / v, seed)
    tag = v if seed == 0 else f"{v}-seed-{seed}"
    train_dir, eval_dir = run / "train", run / "evaluate"
    final = train_dir / "checkpoints" / "final"
    train = [python, "train.py", "experiment=demo", f"study={v}", f"paths.data_dir={data_dir}",
             f"hydra.run.dir={train_dir}", *([f"seed={seed}"] if seed else []), *overrides]  # fmt: skip
    # Seconds each step took when it ran (kept across reruns that reuse it).
    times_file = run / "times.json"
    times = read_json(times_file) or {}
    record = {"command": train, "sources": train_sources}
    if is_fresh(final / "config.json", data_mtime, record):
        print(f"\n=== train-{tag}: reusing {final}")
    else:
        times["train"] = run_recorded(f"train-{tag}", train, out / "logs", final / "demo_command.json", record)
    evaluate = [python, "evaluate.py", f"checkpoint={final}", f"paths.data_dir={data_dir}",
                f"hydra.run.dir={eval_dir}", *EVAL_ARGS]  # fmt: skip
    record = {"command": evaluate, "sources": sources_digest(skip=("speechllm/study.py", "speechllm/demo.py"))}
    if is_fresh(eval_dir / "report.json", (final / "config.json").stat().st_mtime, record):
        print(f"\n=== evaluate-{tag}: reusing {eval_dir / 'report.json'}")
    else:
        times["evaluate"] = run_recorded(
            f"evaluate-{tag}", evaluate, out / "logs", eval_dir / "demo_command.json", record
        )
    times_file.parent.mkdir(parents=True, exist_ok=True)
    times_file.write_text(json.dumps(times))
    return variant_result(json.loads((eval_dir / "report.json").read_text()), train_dir), times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="study", help="folder for the study (one subfolder per variant)")
    parser.add_argument(
        "--data-dir", default="data", help="prepared datasets (paths.data_dir), shared with the demo"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated conf/study/ names")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0],
        help="training seeds per variant (seed 0 in OUT/<variant>, seed s in OUT/<variant>/seed-s); each "
        "variant's numbers are the mean over its finished seeds",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every variant")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error(f"--seeds {args.seeds}: give distinct seeds >= 0")

    variants = [v for v in args.variants.split(",") if v]
    if not variants:
        raise SystemExit(f"study: no variants given; known: {', '.join(VARIANTS)}")
    unknown = [v for v in variants if not (CONF_DIR / "study" / f"{v}.yaml").is_file()]
    if unknown:
        raise SystemExit(f"study: no conf/study/ config for {unknown}; known: {sorted(VARIANTS)}")
    out = (REPO / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    data_dir = str((REPO / args.data_dir).resolve())
    python = sys.executable
    start = time.perf_counter()

    # Every variant's data first: a later prepare must not make an earlier checkpoint look stale.
    for v in variants:
        command = prepare_command_for(data_dir, [f"study={v}", *args.overrides])
        run_step(f"prepare-{v}", [python, *command[1:]], out / "logs")
    data_mtime = newest_mtime(Path(data_dir), "**/_complete.json")
    train_sources = sources_digest(
        skip=("speechllm/eval/", "evaluate.py", "speechllm/study.py", "speechllm/demo.py")
    )

    results: dict[str, dict] = {}
    for v in variants:
        runs, seconds = {}, {}
        for seed in args.seeds:
            runs[seed], seconds[seed] = _train_and_evaluate(v, seed, out, data_dir, data_mtime, train_sources,
                                                            args.overrides)  # fmt: skip
            results[v] = combine_seeds(runs)
            results[v]["seconds"] = {  # mean over the seeds whose step ran (a reused step keeps its time)
                k: statistics.mean(t[k] for t in seconds.values() if k in t)
                for k in ("train", "evaluate") if any(k in t for t in seconds.values())
            }  # fmt: skip
            # The report grows with each finished run, so a long study can be read while it runs.
            doc = write_study(
                results, out,
                {"minutes": (time.perf_counter() - start) / 60, "seeds": args.seeds, "overrides": args.overrides},
            )  # fmt: skip

    print("\n" + "=" * 72)
    print(f"study: {out / 'report.md'}, {out / 'plane.png'}, {out / 'results.json'}")
    for c in doc["claims"]:
        print(f"  {c['verdict']:>14}: {c['claim']} ({c['measure']} {_f(c['difference'], 3)})")


if __name__ == "__main__":
    main()
