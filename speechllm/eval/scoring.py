"""Scoring parsed answers: per-task accuracy and balanced accuracy with intervals, agreement between two
models, the questions a model answers one way whatever the clip, and the numbers a comparison of runs reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from speechllm import parsing
from speechllm.eval import retention
from speechllm.eval.tasks import (
    Item,
    balanced_accuracy,
    chance_level,
    clip_interval,
    normalize_answer,
)

# ----- scoring ---------------------------------------------------------------------------------------


def parse_answers(items: Sequence[Item], answers: Sequence[str]) -> list[str | None]:
    """Parsed label (label tasks), extracted transcript (content) or normalized text (exact match) per item."""
    out: list[str | None] = []
    for it, a in zip(items, answers, strict=True):
        if it.exact:
            out.append(normalize_answer(a) or None)
        elif it.classes:
            out.append(parsing.parse_label(a, it.task, it.classes))
        else:
            out.append(parsing.extract_transcript(a))
    return out


def score(items: Sequence[Item], parsed: Sequence[str | None]) -> dict[str, dict]:
    """Per-task scores.

    Args:
        items: the questions.
        parsed: from :func:`parse_answers`.

    Returns:
        {task: {"accuracy", "n", "answered", "chance", "chance_uniform"}}, label tasks also with
        "balanced_accuracy", 95% clip-bootstrap intervals of both ("accuracy_ci", "balanced_accuracy_ci")
        and the number of clips asked about; content tasks (no classes)
        get "wer" and accuracy = max(0, 1 - WER) (word accuracy) with chance 0.
    """
    by_task: dict[str, list[tuple[Item, str | None]]] = {}
    for it, p in zip(items, parsed, strict=True):
        by_task.setdefault(it.task, []).append((it, p))
    out: dict[str, dict] = {}
    for task, pairs in by_task.items():
        golds = [it.gold for it, _ in pairs]
        if pairs[0][0].exact:
            out[task] = {
                "accuracy": sum(p == it.gold for it, p in pairs) / len(pairs),
                "metric": "exact match",
                "n": len(pairs),
                "answered": sum(p is not None for _, p in pairs) / len(pairs),
                "chance": max(Counter(golds).values()) / len(golds),  # always the most frequent reference
                "chance_uniform": 1.0 / len(set(golds)),
            }
        elif pairs[0][0].classes:
            classes = pairs[0][0].classes
            majority, uniform = chance_level(golds, classes)
            out[task] = {
                "accuracy": sum(p == it.gold for it, p in pairs) / len(pairs),
                "balanced_accuracy": balanced_accuracy(golds, [p for _, p in pairs], classes),
                # 95% intervals from resampling clips (the questions about one clip are not independent)
                **clip_interval(golds, [p for _, p in pairs], classes, [it.row for it, _ in pairs]),
                "n": len(pairs),
                "clips": len({it.row for it, _ in pairs}),
                "answered": sum(p is not None for _, p in pairs) / len(pairs),
                "chance": majority,
                "chance_uniform": uniform,
                "one_answer_questions": one_answer_questions(pairs),
            }
        else:
            wer = parsing.word_error_rate(golds, [p or "" for _, p in pairs])
            out[task] = {
                "accuracy": max(0.0, 1.0 - wer),
                "wer": wer,
                "n": len(pairs),
                "answered": sum(bool(p) for _, p in pairs) / len(pairs),
                "chance": 0.0,
                "chance_uniform": 0.0,
            }
    return out


def one_answer_questions(pairs: Sequence[tuple[Item, str | None]], min_clips: int = 3) -> list[dict]:
    """Questions the model answers the same way (one class, or no answer) for every clip it was asked about.

    A model that does not hear gives one answer to a question whatever the clip; accuracy then only
    reflects how often that answer happens to be the label.

    Args:
        pairs: (item, parsed answer) of one task.
        min_clips: questions asked about fewer clips are not judged.

    Returns:
        [{"question", "answer" (the class, or None), "clips"}] in question order.
    """
    by_question: dict[str, list[str | None]] = {}
    for it, p in pairs:
        by_question.setdefault(it.question, []).append(p)
    return [
        {"question": q, "answer": answers[0], "clips": len(answers)}
        for q, answers in by_question.items()
        if len(answers) >= min_clips and len(set(answers)) == 1
    ]


def target_score(scores: dict[str, dict]) -> float:
    """The plane's x-axis: mean accuracy over the attribute tasks.

    Content is left out: the speech prompt carries the transcript, so it measures ASR and copying more
    than what the adapter learned. A content-only evaluation falls back to its word accuracy.
    """
    attributes = [v["accuracy"] for v in scores.values() if "wer" not in v]
    values = attributes or [v["accuracy"] for v in scores.values()]
    return sum(values) / len(values)


def learned_score(scores: dict[str, dict]) -> float | None:
    """The plane's x-axis: mean balanced accuracy over the attribute tasks (content left out, as in
    :func:`target_score`); None when no attribute task was scored."""
    values = [v["balanced_accuracy"] for v in scores.values() if "balanced_accuracy" in v]
    return sum(values) / len(values) if values else None


def summary(report: dict) -> dict:
    """The numbers a comparison of runs reads: what was learned and what was kept, for the trained
    model and for its untrained baseline (the LLM untouched: only the format part of retention moves)."""
    ret = report.get("retention", {})
    fmt = ret.get("format", {})
    drift = ret.get("drift", {})
    measured = "skipped" not in drift and bool(drift)
    # A frozen LLM is the base: it agrees with the base's answers by definition.
    agreement = drift.get("agreement") if measured else 1.0
    base_refusal = drift.get("base", {}).get("refusal_harmful") if measured else None
    tuned_refusal = drift.get("tuned", {}).get("refusal_harmful") if measured else None
    kept = retention.retention_score(
        fmt.get("speech"), fmt.get("text"), agreement, tuned_refusal, base_refusal
    )
    out = {
        "target_score": target_score(report["unseen"]),
        "learned": learned_score(report["unseen"]),
        "retention": kept["score"],
        "retention_parts": kept["parts"],
        "baseline_target_score": None,
        "baseline_learned": None,
        "baseline_retention": None,
    }
    if "baseline" in report:
        base_kept = retention.retention_score(fmt.get("baseline"), fmt.get("text"), 1.0)
        out.update(
            baseline_target_score=target_score(report["baseline"]),
            baseline_learned=learned_score(report["baseline"]),
            baseline_retention=base_kept["score"],
        )
    return out


def agreement(items: Sequence[Item], a: Sequence[str | None], b: Sequence[str | None]) -> dict[str, float]:
    """How often two models' parsed answers agree, per task.

    Label tasks: share of items where both parse to the same class (two unparseable answers do not
    count as agreeing). Content: mean over items of the word accuracy of `a`'s transcript against
    `b`'s, max(0, 1 - WER); an item where `b` gave no transcript scores 0, as two unparseable labels do.
    """
    by_task: dict[str, list[tuple[Item, str | None, str | None]]] = {}
    for it, x, y in zip(items, a, b, strict=True):
        by_task.setdefault(it.task, []).append((it, x, y))
    out: dict[str, float] = {}
    for task, triples in by_task.items():
        if triples[0][0].classes:
            out[task] = sum(x is not None and x == y for _, x, y in triples) / len(triples)
        else:
            out[task] = sum(
                max(0.0, 1.0 - parsing.word_error_rate([y], [x or ""]))
                if parsing.normalize_words(y or "")
                else 0.0
                for _, x, y in triples
            ) / len(triples)
    return out


def answer_samples(items: Sequence[Item], answers: dict[str, list[str]], k: int) -> list[dict]:
    """Up to k items, round-robin over tasks, with every model's answer."""
    by_task: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_task.setdefault(it.task, []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < k and any(depth < len(v) for v in by_task.values()):
        for idxs in by_task.values():
            if depth < len(idxs) and len(picked) < k:
                picked.append(idxs[depth])
        depth += 1
    return [
        {
            "task": items[i].task,
            "question": items[i].question,
            "gold": items[i].gold,
            **{name: ans[i] for name, ans in answers.items()},
        }
        for i in picked
    ]
