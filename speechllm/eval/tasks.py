"""Evaluation tasks and their unseen questions.

Training teaches only description-style requests ("What can you hear from the audio?", the pools in
`speechllm.data.instructions`); evaluation asks direct questions about one attribute each, in
phrasings that appear nowhere in training (a test checks the sets are disjoint). A question may name
the options (``{options}`` is filled with the task's classes, e.g. "female or male"), since a model
that knows the answer should not lose points for choosing a synonym nobody parses.

Tasks:
    one per labelled attribute (``label_<name>`` column) whose YAML has `task.questions`: gender,
    accent, emotion, age, pitch, speed, volume; scored by accuracy after
    :func:`speechllm.parsing.parse_label`.
    ``content``: what was said, against ``label_text`` (or ``label_transcript``); scored by WER.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from speechllm.attributes import attribute_tasks

# The spoken-content task's phrasings; every other task's come from its attribute's YAML (`task.questions`).
# Never reuse a training instruction here (tests/test_eval.py checks).
CONTENT_QUESTIONS: list[str] = [
    "Write down exactly the words that were spoken.",
    "What sentence did the person say? Quote it.",
    "Transcribe the speech word for word.",
    "Repeat what the talker said, verbatim.",
]


def unseen_questions() -> dict[str, list[str]]:
    """Phrasings per task: each attribute task's `task.questions` (in task order), then `content`."""
    out = {name: list(t.questions) for name, t in attribute_tasks().items() if t.questions}
    out["content"] = list(CONTENT_QUESTIONS)
    return out


# Label columns checked for the spoken-content task, in order of preference.
CONTENT_LABEL_COLUMNS = ("label_text", "label_transcript")


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    Attributes:
        name: task name, used in report keys (``unseen.<name>.accuracy``).
        label_column: the gold column (``label_<name>``, or ``label_text`` for content).
        kind: "label" (classification, accuracy) or "transcript" (spoken content, WER).
        questions: phrasings; ``{options}`` is replaced by the classes.
    """

    name: str
    label_column: str
    kind: str
    questions: tuple[str, ...]


@dataclass
class Item:
    """One question about one clip.

    Attributes:
        row: index of the clip in the evaluated rows.
        task: the task name.
        question: the question as asked.
        gold: the gold label (lowercased) or transcript.
        classes: the task's classes (empty for content).
        exact: scored by exact match with `gold` (an external instruction set's free-form reference),
            after :func:`normalize_answer`, instead of as a label or a transcript.
    """

    row: int
    task: str
    question: str
    gold: str
    classes: tuple[str, ...]
    exact: bool = False


def normalize_answer(text: str) -> str:
    """Lowercase words only (punctuation, articles and extra spaces dropped), for exact-match scoring."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def all_unseen_questions() -> set[str]:
    """Every question template of :func:`unseen_questions` (with ``{options}`` unfilled)."""
    return {q for qs in unseen_questions().values() for q in qs}


def select_tasks(
    columns: Sequence[str], names: Sequence[str] | None = None
) -> tuple[list[Task], dict[str, str]]:
    """The tasks the data has labels for.

    Args:
        columns: the evaluated dataset's column names.
        names: tasks to run (default: every task of :func:`unseen_questions`).

    Returns:
        (tasks to run, {skipped task: reason}). A task is skipped when its label column is missing.

    Raises:
        ValueError: a requested name is not a known task.
    """
    questions = unseen_questions()
    names = list(names) if names is not None else list(questions)
    unknown = [n for n in names if n not in questions]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown}; known: {sorted(questions)}")
    cols = set(columns)
    tasks: list[Task] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "content":
            column = next((c for c in CONTENT_LABEL_COLUMNS if c in cols), None)
            if column is None:
                skipped[name] = f"no {' or '.join(CONTENT_LABEL_COLUMNS)} column"
                continue
            tasks.append(Task(name, column, "transcript", tuple(questions[name])))
        else:
            column = f"label_{name}"
            if column not in cols:
                skipped[name] = f"no {column} column"
                continue
            tasks.append(Task(name, column, "label", tuple(questions[name])))
    return tasks, skipped


def gold_value(row: dict, task: Task) -> str | None:
    """The row's gold value for a task (label values lowercased), or None when missing/empty."""
    value = row.get(task.label_column)
    if value is None:
        return None
    value = str(value).strip()
    if not value or value.lower() in {"nan", "none", "unknown"}:
        return None
    return value if task.kind == "transcript" else value.lower()


def task_classes(rows: Sequence[dict], task: Task) -> tuple[str, ...]:
    """Sorted distinct gold labels of a label task over the evaluated rows."""
    return tuple(sorted({g for r in rows if (g := gold_value(r, task)) is not None}))


def format_options(classes: Sequence[str]) -> str:
    """ "a, b or c" for a question's ``{options}``."""
    classes = list(classes)
    if len(classes) <= 1:
        return "".join(classes)
    return ", ".join(classes[:-1]) + " or " + classes[-1]


def build_items(
    rows: Sequence[dict], tasks: Sequence[Task], questions_per_task: int = 1, seed: int = 0
) -> tuple[list[Item], dict[str, str]]:
    """Questions to ask: for each clip and task, `questions_per_task` phrasings.

    Phrasings are assigned by a hash of (seed, clip id, task), so every phrasing is used across clips
    and the assignment does not depend on row order.

    Args:
        rows: evaluated clips (dicts with ``clip_id`` and label columns).
        tasks: from :func:`select_tasks`.
        questions_per_task: phrasings asked per clip and task (capped at the number available).
        seed: changes the assignment.

    Returns:
        (items, {task: reason} for tasks dropped here: no gold values, or a single class).
    """
    items: list[Item] = []
    skipped: dict[str, str] = {}
    for task in tasks:
        classes = task_classes(rows, task) if task.kind == "label" else ()
        if task.kind == "label" and len(classes) < 2:
            skipped[task.name] = (
                f"{task.label_column} has {len(classes)} distinct value(s) {list(classes)}; need >= 2"
            )
            continue
        task_items: list[Item] = []
        k = max(1, min(questions_per_task, len(task.questions)))
        for i, row in enumerate(rows):
            gold = gold_value(row, task)
            if gold is None:
                continue
            key = f"{seed}:{row.get('clip_id', i)}:{task.name}"
            start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % len(task.questions)
            for j in range(k):
                template = task.questions[(start + j) % len(task.questions)]
                question = template.replace("{options}", format_options(classes))
                task_items.append(Item(i, task.name, question, gold, classes))
        if not task_items:
            skipped[task.name] = f"{task.label_column} is empty for every evaluated clip"
            continue
        items.extend(task_items)
    return items, skipped


def chance_level(golds: Sequence[str], classes: Sequence[str]) -> tuple[float, float]:
    """Chance levels of a label task.

    Args:
        golds: the gold labels of the scored items.
        classes: the task's classes.

    Returns:
        (majority rate: the share of the most frequent gold label, i.e. what always answering it
        scores; uniform: 1 / number of classes). Reports use the majority rate, the higher bar.
    """
    if not golds:
        return 0.0, 0.0
    majority = Counter(golds).most_common(1)[0][1] / len(golds)
    return float(majority), 1.0 / max(1, len(classes))


def balanced_accuracy(golds: Sequence[str], preds: Sequence[str | None], classes: Sequence[str]) -> float:
    """Mean per-class recall over the classes present in `golds`.

    Answering one class for every clip scores 1/classes however the labels are distributed, which plain
    accuracy hides when one class is common. Unparsed predictions (None) count as wrong.
    """
    recalls = []
    for c in classes:
        idx = [i for i, g in enumerate(golds) if g == c]
        if idx:
            recalls.append(sum(preds[i] == c for i in idx) / len(idx))
    return sum(recalls) / len(recalls) if recalls else 0.0


def clip_interval(golds: Sequence[str], preds: Sequence[str | None], classes: Sequence[str],
                  clips: Sequence[object], confidence: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> dict[str, list[float]]:  # fmt: skip
    """Bootstrap intervals of accuracy and balanced accuracy, resampling whole clips.

    The questions asked about one clip share its audio, so they are not independent answers: the
    interval resamples clips (with every question asked about each), not answers.

    Args:
        golds: gold class per answer.
        preds: parsed class per answer (None: unparsed, counted wrong).
        classes: the task's classes.
        clips: the clip each answer is about (any hashable id).
        confidence: the interval's coverage.
        resamples: bootstrap resamples.
        seed: the resampling's seed (the interval is reproducible).

    Returns:
        {"accuracy_ci": [lo, hi], "balanced_accuracy_ci": [lo, hi]}, percentile intervals.

    Shapes: per-clip counts (clips, classes); each resample weighs the clips by how often it drew them.
    """
    import numpy as np
    from scipy.stats import bootstrap

    clip_ids = sorted(set(clips), key=str)
    if len(clip_ids) < 2:  # nothing to resample
        acc = sum(p == g for p, g in zip(preds, golds, strict=True)) / max(1, len(golds))
        bal = balanced_accuracy(golds, preds, classes)
        return {"accuracy_ci": [acc, acc], "balanced_accuracy_ci": [bal, bal]}
    row_of = {c: i for i, c in enumerate(clip_ids)}
    col_of = {c: k for k, c in enumerate(classes)}
    asked = np.zeros((len(clip_ids), len(classes)))
    right = np.zeros((len(clip_ids), len(classes)))
    for g, p, c in zip(golds, preds, clips, strict=True):
        asked[row_of[c], col_of[g]] += 1
        right[row_of[c], col_of[g]] += p == g

    def scores(index, axis=-1):
        index = np.asarray(index, dtype=int)
        n, k = asked[index].sum(axis=-2), right[index].sum(axis=-2)  # (..., classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(n > 0, k / n, np.nan)
        return k.sum(-1) / n.sum(-1), np.nanmean(recall, axis=-1)

    out = {}
    for key, which in (("accuracy_ci", 0), ("balanced_accuracy_ci", 1)):
        res = bootstrap((np.arange(len(clip_ids)),), lambda i, axis=-1, w=which: scores(i, axis)[w],
                        confidence_level=confidence, n_resamples=resamples, method="percentile",
                        vectorized=True, rng=np.random.default_rng(seed))  # fmt: skip
        out[key] = [
            round(float(res.confidence_interval.low), 4),
            round(float(res.confidence_interval.high), 4),
        ]
    return out
