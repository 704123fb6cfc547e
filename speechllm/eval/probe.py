"""A cheap listening probe: which class's answer the speech model finds most likely.

Generation is slow and its parsing hides small changes, so training watches a likelihood probe instead:
for a fixed set of held-out clips and unseen questions (the evaluation's, `speechllm.eval.tasks`), the
model reads the start of a templated answer ("The speaker is a") and the class word it finds most likely
next (" female" or " male", by first token) is its choice; one forward pass per question. Balanced
accuracy (mean per-class recall) over the clips says whether it hears the attribute: a model that
prefers one class for every clip scores chance, 1/classes.

Templated answers are a yardstick, not the model's own words; the evaluation's generated answers
remain the measure that counts. The probe answers "when does each attribute start to be heard".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from speechllm.attributes import attribute_tasks
from speechllm.eval.tasks import balanced_accuracy, build_items, select_tasks

log = logging.getLogger(__name__)


def answer_templates() -> dict[str, str]:
    """One answer template per attribute task (the YAML's `task.probe`), worded as the speech model
    words its own answers ("The speaker is a male."); `{v}` is the class, `{V}` the class capitalised
    (accents are names). The same words for every class, so the scores differ only where the class
    word does."""
    return {name: t.probe for name, t in attribute_tasks().items() if t.probe}


def answer(task: str, cls: str) -> str:
    """The templated answer naming `cls` for `task`."""
    return answer_templates()[task].format(v=cls, V=cls.title())


@dataclass
class ProbeResult:
    """Per task: balanced accuracy, accuracy, n, chance (1/classes), and how many clips got each class."""

    scores: dict[str, dict]

    def flat(self, prefix: str = "probe/") -> dict[str, float]:
        """`{prefix}<task>`: balanced accuracy per task, and `{prefix}mean` over tasks (for logging)."""
        out = {f"{prefix}{t}": s["balanced_accuracy"] for t, s in self.scores.items()}
        if self.scores:
            out[f"{prefix}mean"] = sum(out.values()) / len(out)
        return out


class ClassProbe:
    """Which class a model prefers for fixed (clip, unseen question) items, by its templated answer.

    Args:
        rows: held-out clips (dicts with `clip_id`, `audio_path`, `transcript`, `label_*`).
        tasks: attribute task names to probe (None: every labelled one that has a template).
        questions_per_task: unseen phrasings per clip and task.
        seed: the question assignment (as in the evaluation).
        batch_size: rows per forward pass.
    """

    def __init__(self, rows: Sequence[dict], tasks: Sequence[str] | None = None, questions_per_task: int = 1,
                 seed: int = 0, batch_size: int = 16):  # fmt: skip
        templates = answer_templates()
        names = [t for t in (tasks or templates) if t in templates]
        columns = sorted({k for r in rows for k in r})
        chosen, _ = select_tasks(columns, names)
        self.rows = list(rows)
        self.items, skipped = build_items(self.rows, chosen, questions_per_task, seed)
        for name, why in skipped.items():
            log.info("probe: skipping %s (%s)", name, why)
        self.batch_size = batch_size

    @property
    def tasks(self) -> list[str]:
        return sorted({it.task for it in self.items})

    def _first_tokens(self, tokenizer, task: str, classes: Sequence[str]) -> tuple[str, list[int] | None]:
        """The answer's shared prefix and each class word's first token after it (None when two classes
        share a first token or the prefix does not tokenize apart: then whole answers are scored)."""
        template = answer_templates()[task]
        prefix = template[: template.index("{")].rstrip()
        head = tokenizer(prefix, add_special_tokens=False).input_ids
        ids = []
        for c in classes:
            whole = tokenizer(answer(task, c), add_special_tokens=False).input_ids
            if whole[: len(head)] != head or len(whole) <= len(head):
                return prefix, None
            ids.append(whole[len(head)])
        return prefix, ids if len(set(ids)) == len(ids) else None

    @torch.no_grad()
    def __call__(self, model, audio: Callable[[dict], dict] | None = None) -> ProbeResult:
        """Run the probe: one forward row per question, the class words' first tokens compared after the
        answer's shared prefix ("The speaker is a" -> " female" vs " male").

        Args:
            model: a SpeechLM.
            audio: row -> its audio fields (e.g. cached `encoder_features`); default: `audio_path`.

        Returns:
            The per-task scores.
        """
        audio = audio or (lambda r: {"audio_path": r["audio_path"]})
        heads = {}
        for it in self.items:
            if it.task not in heads:
                heads[it.task] = self._first_tokens(model.tokenizer, it.task, it.classes)
        # (item index, class or None for "compare first tokens", row)
        requests: list[tuple[int, str | None, dict]] = []
        for i, it in enumerate(self.items):
            clip = self.rows[it.row]
            base = {"clip_id": clip.get("clip_id"), "transcript": clip.get("transcript"),
                    "instruction": it.question, **audio(clip)}  # fmt: skip
            prefix, ids = heads[it.task]
            if ids is not None:
                requests.append((i, None, {**base, "target": prefix}))
            else:
                requests += [(i, c, {**base, "target": answer(it.task, c)}) for c in it.classes]
        collate = model.collator()
        was_training = model.training
        model.eval()
        preds: dict[int, str] = {}
        whole: dict[int, dict[str, float]] = {}
        try:
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start : start + self.batch_size]
                batch = collate([r for _, _, r in chunk])
                out = model(**batch, labelled_logits_only=True)
                # Each row's last labelled position predicts what follows its target (the end of turn).
                rows_of = (batch["labels"][:, 1:] != -100).nonzero()[:, 0]
                for k, (i, c, _) in enumerate(chunk):
                    if c is None:
                        last = int((rows_of == k).nonzero().max())
                        ids = heads[self.items[i].task][1]
                        preds[i] = self.items[i].classes[int(out["labelled_logits"][last][ids].argmax())]
                    else:
                        whole.setdefault(i, {})[c] = float(out["label_logprob"][k])
        finally:
            model.train(was_training)
        for i, by_class in whole.items():
            preds[i] = max(by_class, key=by_class.get)
        scores = {}
        for task in self.tasks:
            idx = [i for i, it in enumerate(self.items) if it.task == task]
            golds = [self.items[i].gold for i in idx]
            task_preds = [preds[i] for i in idx]
            classes = self.items[idx[0]].classes
            scores[task] = {
                "balanced_accuracy": balanced_accuracy(golds, task_preds, classes),
                "accuracy": sum(p == g for p, g in zip(task_preds, golds, strict=True)) / len(idx),
                "n": len(idx),
                "chance": 1.0 / len(classes),
                "predicted": {c: task_preds.count(c) for c in classes},
            }
        return ProbeResult(scores)
