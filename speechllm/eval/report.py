"""Writing an evaluation: `report.json` (numbers), `report.md` (tables people read), PNG plots.

report.json layout (every leaf listed here is a number):
    unseen.<task>.{accuracy, balanced_accuracy, chance, chance_uniform, n, clips, answered}   speech model,
        unseen questions; unseen.<task>.{accuracy_ci, balanced_accuracy_ci} are [low, high] 95% intervals
        (bootstrap over clips); unseen.<task>.one_answer_questions lists questions answered alike for every clip
    ceiling.<task>.{accuracy, n}          text LLM reading the gold description
    agreement.<task>                      share of items where speech and text answers parse alike
    baseline_agreement.<task>             the same for the untrained baseline
    baseline.<task>.{accuracy, n}         the adapter at initialisation
    retention.format.{speech, text, delta, baseline, n}
    retention.drift.{kl, ppl_tuned, ppl_base, agreement, n_tokens}   text only, when the LLM's weights changed
    summary.{learned, retention}          the two axes of the learning-vs-forgetting plane: mean balanced
                                          accuracy over the attribute tasks, and the retention score
                                          (speechllm.eval.retention.retention_score; its parts beside it);
                                          baseline_learned, baseline_retention for the untrained adapter;
                                          target_score is the mean plain accuracy
For the content task, ``accuracy`` is word accuracy max(0, 1 - WER) and ``wer`` is given beside it;
its ``chance`` is 0 (there is no chance level for open transcription).
``chance`` is the majority rate (always answering the most frequent gold label); ``chance_uniform``
is 1 / number of classes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def write_json(report: dict, out_dir: str) -> str:
    """Write ``report.json`` (atomic rename) and return its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
    os.replace(tmp, path)
    return path


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _with_ci(value, ci) -> str:
    """A score with its 95% interval: "0.875 [0.81, 0.93]"."""
    return _fmt(value) if not ci else f"{_fmt(value)} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def render_markdown(report: dict, plots: Sequence[str] = ()) -> str:
    """The report as markdown: header, per-task table, retention, drift, skipped tasks, samples.

    Args:
        report: the dict written to report.json.
        plots: PNG file names (relative to the report) to embed.

    Returns:
        Markdown text.
    """
    lines = [f"# Evaluation: `{report.get('checkpoint', '?')}`", ""]
    meta = report.get("meta", {})
    lines.append(
        f"Data: `{meta.get('data', '?')}` · clips: {meta.get('n_clips', '?')} · "
        f"questions per task and clip: {meta.get('questions_per_task', '?')} · "
        f"max_new_tokens: {meta.get('max_new_tokens', '?')} · LLM: `{meta.get('llm', '?')}` · "
        f"seconds: {_fmt(meta.get('seconds'), 1)}"
    )
    lines += [
        "",
        "## Unseen instructions",
        "",
        "Scores with their 95% interval [low, high], from resampling the clips (2000 bootstrap draws).",
        "",
    ]
    if meta.get("reference_questions") not in (None, meta.get("n_questions")):
        lines[-1:-1] = [
            f"The ceiling and the untrained baseline answer {meta['reference_questions']} of the "
            f"{meta['n_questions']} questions (each clip's first phrasings per task; "
            "`eval.reference_questions_per_task`); agreement is over those.",
            "",
        ]
    lines.append(
        "| task | n | speech model | balanced | ceiling (text LLM + description) | agreement | untrained baseline "
        "| baseline agreement | chance (majority) | 1/classes |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for task, u in report.get("unseen", {}).items():
        c = report.get("ceiling", {}).get(task, {})
        b = report.get("baseline", {}).get(task, {})
        name = f"{task} (word acc.; WER {_fmt(u.get('wer'))})" if "wer" in u else task
        name = f"{task} ({u['metric']})" if "metric" in u else name
        lines.append(
            f"| {name} | {u.get('n')} | {_with_ci(u.get('accuracy'), u.get('accuracy_ci'))} | "
            f"{_with_ci(u.get('balanced_accuracy'), u.get('balanced_accuracy_ci'))} | "
            f"{_with_ci(c.get('accuracy'), c.get('accuracy_ci'))} | "
            f"{_fmt(report.get('agreement', {}).get(task))} | {_with_ci(b.get('accuracy'), b.get('accuracy_ci'))} | "
            f"{_fmt(report.get('baseline_agreement', {}).get(task))} | "
            f"{_fmt(u.get('chance'))} | {_fmt(u.get('chance_uniform'))} |"
        )
    same = [(t, q) for t, u in report.get("unseen", {}).items() for q in u.get("one_answer_questions", [])]
    if same:
        lines += ["", "Questions answered alike for every clip (the model does not hear what they ask):", ""]
        lines += [f"- {t}: \"{_clip(q['question'], 90)}\" -> {q['answer'] or 'no answer'} "
                  f"({q['clips']} clips)" for t, q in same]  # fmt: skip
    skipped = report.get("skipped", {})
    if skipped:
        lines += ["", "Skipped tasks: " + "; ".join(f"**{k}** ({v})" for k, v in skipped.items()) + "."]
    fmt = report.get("retention", {}).get("format")
    if fmt:
        lines += ["", "## Retention: format following", ""]
        lines.append(
            f"Pass rate with audio input **{_fmt(fmt['speech'])}**, text LLM with the description "
            f"**{_fmt(fmt['text'])}**, untrained baseline {_fmt(fmt.get('baseline'))}; "
            f"forgetting Δ = speech/text − 1 = **{_fmt(fmt['delta'])}** (n = {fmt['n']} per side)."
        )
        by_s, by_t = fmt.get("by_constraint_speech", {}), fmt.get("by_constraint_text", {})
        if by_s:
            lines += ["", "| constraint | speech | text |", "|---|---|---|"]
            for k in by_s:
                lines.append(f"| {k} | {_fmt(by_s[k])} | {_fmt(by_t.get(k))} |")
    drift = report.get("retention", {}).get("drift")
    if drift:
        lines += ["", "## Retention: text-only drift from the base LLM", ""]
        if "skipped" in drift:
            lines.append(f"Not measured: {drift['skipped']}.")
        else:
            lines.append(
                f"Mean KL(base ‖ tuned) per token on the base's own answers: **{_fmt(drift['kl'], 4)}**; "
                f"perplexity tuned {_fmt(drift['ppl_tuned'])} vs base {_fmt(drift['ppl_base'])}; "
                f"the tuned model's likeliest next token is the base's for **{_fmt(drift.get('agreement'))}** "
                f"of them ({drift['n_tokens']} tokens)."
            )
            lines += [
                "",
                "| | JSON valid | refusal (harmful) | refusal (safe look-alikes) |",
                "|---|---|---|---|",
            ]
            for who in ("base", "tuned"):
                d = drift.get(who, {})
                lines.append(
                    f"| {who} | {_fmt(d.get('json_valid'))} | {_fmt(d.get('refusal_harmful'))} | "
                    f"{_fmt(d.get('refusal_safe'))} |"
                )
    summ = report.get("summary", {})
    if summ.get("retention") is not None:
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in summ.get("retention_parts", {}).items())
        lines += [
            "",
            f"**Learned** (mean balanced accuracy over the attribute tasks): {_fmt(summ.get('learned'))} "
            f"(untrained {_fmt(summ.get('baseline_learned'))}); **kept** (retention score, 1 = all): "
            f"{_fmt(summ['retention'])} ({parts}; each the trained model's score over the base's, capped at 1).",
        ]
    for p in plots:
        lines += ["", f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})"]
    samples = report.get("samples", [])
    if samples:
        lines += ["", "## Sample questions and answers", ""]
        lines.append("| task | question | gold | speech model | text LLM (ceiling) | baseline |")
        lines.append("|---|---|---|---|---|---|")
        for s in samples:
            lines.append(
                f"| {s['task']} | {_clip(s['question'], 80)} | {_clip(s['gold'], 60)} | {_clip(s['speech'])} | "
                f"{_clip(s.get('text', ''))} | {_clip(s.get('baseline', ''))} |"
            )
    notes = report.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_tasks(report: dict, path: str) -> str:
    """Bar chart: per task, the speech model beside the ceiling, the baseline and chance.

    Args:
        report: the report dict.
        path: PNG file to write.

    Returns:
        `path`.
    """
    tasks = list(report.get("unseen", {}))
    series = [
        ("speech model", [report["unseen"][t]["accuracy"] for t in tasks]),
        ("ceiling (text LLM)", [report.get("ceiling", {}).get(t, {}).get("accuracy", 0.0) for t in tasks]),
        ("untrained baseline", [report.get("baseline", {}).get(t, {}).get("accuracy", 0.0) for t in tasks]),
    ]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(tasks) + 2), 3.6))
    width = 0.8 / len(series)
    for k, (name, vals) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(tasks))]
        ax.bar(xs, vals, width, label=name)
    for i, t in enumerate(tasks):
        ax.hlines(
            report["unseen"][t].get("chance", 0.0),
            i - 0.45,
            i + 0.45,
            colors="k",
            linestyles="--",
            label="chance (majority)" if i == 0 else None,
        )
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n(word acc.)" if "wer" in report["unseen"][t] else t for t in tasks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Unseen instructions")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_retention(report: dict, path: str) -> str:
    """Bar chart of format-following pass rates per constraint, speech vs text."""
    fmt = report["retention"]["format"]
    names = list(fmt.get("by_constraint_speech", {}))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 2), 3.4))
    for k, (label, key) in enumerate(
        (("audio input", "by_constraint_speech"), ("text + description", "by_constraint_text"))
    ):
        vals = [fmt.get(key, {}).get(n, 0.0) for n in names]
        ax.bar([i - 0.2 + 0.4 * k for i in range(len(names))], vals, 0.4, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate")
    ax.set_title(f"Format following (Δ = {fmt['delta']:+.2f})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str) -> dict[str, str]:
    """Write report.json, the plots and report.md into `out_dir`.

    Args:
        report: the evaluation dict (see the module docstring).
        out_dir: output folder (created).

    Returns:
        {"json": path, "md": path, "plots": [paths]} as a dict of strings/lists.
    """
    os.makedirs(out_dir, exist_ok=True)
    plots = []
    if report.get("unseen"):
        plots.append(plot_tasks(report, os.path.join(out_dir, "tasks.png")))
    if report.get("retention", {}).get("format"):
        plots.append(plot_retention(report, os.path.join(out_dir, "retention.png")))
    json_path = write_json(report, out_dir)
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(render_markdown(report, plots))
    return {"json": json_path, "md": md_path, "plots": plots}
