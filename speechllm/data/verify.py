"""Verified self-output: keep the LLM's own answer only where what it says about the clip is right.

Self-Synthesized Rehearsal (arXiv 2403.01244) trains on the model's own outputs only where they are
verified correct. Here a target is checked against the clip's gold `label_*` columns with the
evaluation's answer parser (`speechllm.parsing`), per attribute:

- an attribute the instruction asks about (`instructions.asked_attributes`) must be stated, right, and
  alone: an answer that asserts two of its classes ("The voice is quiet, normal.") is a hedge;
- gender and accent, whose words no other attribute shares, must not be stated wrongly even when not
  asked. (Pitch, speed and volume share words such as "normal" and "high", so an unasked one cannot be
  told apart from another attribute's mention and is not judged.)

A wrong or silent answer is sampled again (`tries` times, temperature `temperature`); the first
sample that passes replaces it, so the target stays the LLM's own words. If none passes, the row is
dropped (a counted reject naming the attribute), kept as it is (`fallback: keep`, marked wrong), or
answered by the LLM rewriting the templated gold answer in its own words (`fallback: paraphrase`, the
SDFT way; judged like any answer, and dropped if it fails too).
A clip without labels is kept unverified and marked so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from speechllm.data.instructions import asked_attributes, attribute_keywords
from speechllm.parsing import find_mentions, parse_label

# Attributes whose class words belong to them alone; the others are judged only when asked.
UNAMBIGUOUS = ("gender", "accent")
VERDICTS = ("correct", "wrong", "unverified")
FALLBACKS = ("drop", "keep", "paraphrase")


@dataclass
class VerifyConfig:
    """`target.verify`: check self-output targets against the clip's labels.

    Attributes:
        enabled: verify (and resample) targets.
        tries: sampled answers tried after a failing greedy one.
        temperature: sampling temperature of the retries.
        top_p: nucleus sampling of the retries.
        fallback: what a row gets when no answer passes: drop (reject it) | keep (keep the last answer,
            marked wrong) | paraphrase (the LLM rewrites the templated gold answer in its own words, as
            `target=paraphrase` does; kept if it passes, else dropped).
    """

    enabled: bool = False
    tries: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    fallback: str = "drop"

    def check(self) -> None:
        if self.tries < 0:
            raise ValueError(f"target.verify.tries={self.tries} must be >= 0")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("target.verify.temperature must be > 0 and top_p in (0, 1]")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"target.verify.fallback={self.fallback!r}: use one of {FALLBACKS}")


def label_classes(rows: Sequence[dict]) -> dict[str, tuple[str, ...]]:
    """Per labelled attribute that verification knows (`label_<name>` with at least two values), its classes."""
    names = {k[len("label_") :] for r in rows for k in r if k.startswith("label_")} & set(
        attribute_keywords()
    )
    out = {}
    for name in sorted(names):
        values = {str(r.get(f"label_{name}")).strip().lower() for r in rows if _has(r.get(f"label_{name}"))}
        if len(values) >= 2:
            out[name] = tuple(sorted(values))
    return out


def _asserts_several(answer: str, task: str, classes: tuple[str, ...]) -> bool:
    asserted = {
        m.label for m in find_mentions(answer, task, classes) if not (m.listed or m.negated or m.weak)
    }
    return len(asserted) > 1


def _has(value) -> bool:
    return value is not None and str(value).strip().lower() not in ("", "nan", "none", "unknown")


@dataclass
class Verdict:
    """What a target says about each checked attribute.

    Attributes:
        verdict: correct | wrong | unverified (the clip has no labels to check against).
        checked: attribute -> [gold, parsed] for every attribute judged.
        failed: the attributes that were wrong or, when asked, silent.
    """

    verdict: str
    checked: dict[str, list]
    failed: list[str]


def verify_answer(answer: str, row: dict, instruction: str, classes: dict[str, tuple[str, ...]]) -> Verdict:
    """Judge one answer against the row's labels.

    Args:
        answer: the target text.
        row: the clip's row (its `label_*` columns).
        instruction: what the LLM was asked.
        classes: from :func:`label_classes` over the whole dataset.

    Returns:
        The verdict.
    """
    asked = set(asked_attributes(instruction))
    labelled = [a for a in classes if _has(row.get(f"label_{a}"))]
    if not labelled:
        return Verdict("unverified", {}, [])
    checked, failed = {}, []
    for name in labelled:
        gold = str(row[f"label_{name}"]).strip().lower()
        parsed = parse_label(answer, name, classes[name])
        if name in asked or (name in UNAMBIGUOUS and parsed is not None):
            checked[name] = [gold, parsed]
            # A hedge that asserts two classes ("quiet, normal") parses to its first; it teaches hedging.
            if parsed != gold or _asserts_several(answer, name, classes[name]):
                failed.append(name)
    return Verdict("wrong" if failed else "correct", checked, failed)


def correctness(verdicts: Sequence[dict]) -> dict[str, dict]:
    """Per attribute: how many judged targets were right, of how many (from stored verdict records).

    Args:
        verdicts: `{"checked": {attr: [gold, parsed]}}` records (before or after resampling).

    Returns:
        {attr: {"right": n, "judged": m, "rate": n / m}}.
    """
    counts: dict[str, list[int]] = {}
    for v in verdicts:
        for name, (gold, parsed) in (v.get("checked") or {}).items():
            c = counts.setdefault(name, [0, 0])
            c[0] += parsed == gold
            c[1] += 1
    return {k: {"right": r, "judged": n, "rate": round(r / n, 3)} for k, (r, n) in sorted(counts.items())}
