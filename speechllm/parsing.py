"""Turning free-text answers into labels, robustly.

Models answer "Based on the audio, the speaker sounds like a woman, not a man." rather than "female".
:func:`parse_label` maps such an answer to one class of a task:

1. **Word boundaries**: a synonym only counts as a whole word (or hyphen-joined part), so "woman" does
   not contain "man", "female" does not contain "male", "slow" does not contain "low".
2. **Synonyms**: each class has a list of words and phrases (female/woman/girl/lady/feminine; fast/
   quick/rapid/brisk; ...), from `task.synonyms` in the attribute's YAML (`speechllm.attributes`).
   Classes the YAML does not list (an accent such as "welsh") match their own name and its words.
3. **Negation**: a mention preceded, within the same clause (no punctuation in between) and at most
   three words before, by a negator (not, no, never, neither, nor, isn't, n't, without, rather than,
   instead of) is *negated*: it does not count for that class. If nothing is asserted but negations
   leave exactly one class ("not male" in a two-class task, "neither high nor low" in a three-class
   one), that class is the answer.
4. **Listed options and hedges**: different classes joined as options, by "or" or a slash, as three or
   more items, or as "between X and Y" ("male or female", "high, low and normal", "male/female") are
   typically the question echoed back, or a hedge; they assert nothing ("quick and steady" and "a
   teenage girl" still answer). Nor does a mention a few words after "can't tell", "not sure", ...
   ("I can't tell if it's a man").
5. **Several classes mentioned**: the *first* asserted mention wins ("female, although the pitch is
   male-like" -> female). Models state their answer first and qualify after; picking the first is
   right more often than counting mentions, which favours long hedges. Answers that mention no class
   parse to ``None`` (scored as wrong).
6. **Weak evidence**: for gender, pronouns (she/her vs he/him/his) decide only when no class word
   was found at all.

Transcripts for the spoken-content task are extracted with :func:`extract_transcript` and scored by
WER (:func:`word_error_rate`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jiwer

from speechllm.attributes import attribute_tasks

_NEGATORS = {
    "not",
    "no",
    "never",
    "neither",
    "nor",
    "isn't",
    "isnt",
    "wasn't",
    "aren't",
    "doesn't",
    "without",
    "hardly",
    "n't",
}
_NEGATOR_PHRASES = ("rather than", "instead of", "as opposed to", "other than")
NEGATION_WINDOW = 3  # words before a mention that a negator may occupy
_TOKEN = re.compile(r"[a-z0-9]+(?:[.'’][a-z0-9]+)*|[.,;:!?()\"/]")
_CLAUSE_BREAK = set('.,;:!?()"')
# What may stand between the options of a list ("high, low, or normal", "male/female").
_LIST_JOINERS = {",", "/", "or", "and", "a", "an", "the"}
UNCERTAIN_WINDOW = 5  # words before a mention that a "can't tell" phrase may occupy
# One of these just before a mention says the model cannot tell, whatever class it then names.
_UNCERTAIN_PHRASES = (
    "can't tell", "cannot tell", "can't say", "cannot say", "can't determine", "cannot determine",
    "hard to tell", "hard to say", "difficult to tell", "difficult to say", "impossible to",
    "not sure", "unsure", "unclear", "unable to", "don't know", "no way to",
)  # fmt: skip


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("’", "'")
    # Hyphens join words in text ("high-pitched") but count as word boundaries for matching, so
    # "high-pitched" matches both "high" and the phrase "high pitched".
    return _TOKEN.findall(text.replace("-", " "))


def synonyms_for(task: str, label: str) -> list[str]:
    """Words and phrases that name `label` in answers for `task`.

    Args:
        task: a task name such as "gender" (unknown tasks use the label's own words only).
        label: a class value, as it appears in the data.

    Returns:
        Lowercase phrases, the label itself first.
    """
    label_l = str(label).strip().lower()
    known = attribute_tasks().get(task)
    words = [label_l] + list(known.synonyms.get(label_l, ()) if known else ())
    # A multi-word label ("en-gb scotland") is also matched by its last word unless that word names
    # a different class; kept simple: the full label is always a phrase.
    seen: list[str] = []
    for w in words:
        if w and w not in seen:
            seen.append(w)
    return seen


class Mention(NamedTuple):
    """One mention of a class in an answer.

    Attributes:
        pos: token index where the phrase starts.
        label: the class it names.
        negated: a negator precedes it in the same clause ("not male").
        weak: a weak-evidence word (a pronoun for gender).
        listed: part of a list of options ("male or female", "high, low or normal") as when the model
            echoes the question, or just after "can't tell" and the like; such mentions assert nothing.
    """

    pos: int
    label: str
    negated: bool
    weak: bool
    listed: bool


def find_mentions(text: str, task: str, classes: Sequence[str]) -> list[Mention]:
    """Every mention of a class in an answer, in order.

    Args:
        text: the answer.
        task: the task name (selects the synonym table).
        classes: the task's classes.

    Returns:
        Mentions sorted by position. A phrase that two classes share counts for each.
    """
    toks = _tokens(text)
    known = attribute_tasks().get(task)
    weak_words = known.weak if known else frozenset()
    phrases: list[tuple[list[str], str, bool]] = []
    for cls in classes:
        for phrase in synonyms_for(task, cls):
            ptoks = _tokens(phrase)
            if ptoks:
                phrases.append((ptoks, cls, phrase in weak_words))
    # Longest phrases first so "low volume" is claimed before "low" at the same position.
    phrases.sort(key=lambda p: -len(p[0]))
    spans: list[tuple[int, int, str, bool]] = []
    taken: set[int] = set()
    for i in range(len(toks)):
        matched: list[tuple[int, int, str, bool]] = []
        for ptoks, cls, weak in phrases:
            n = len(ptoks)
            if matched and n != matched[0][1] - i:
                break
            if toks[i : i + n] == ptoks and not any(j in taken for j in range(i, i + n)):
                matched.append((i, i + n, cls, weak))
        if matched:
            taken.update(range(matched[0][0], matched[0][1]))
            spans.extend(matched)
    listed = _listed_spans([(a, b, cls) for a, b, cls, _ in spans], toks)
    out = [
        Mention(a, cls, _negated(toks, a), weak, (a, b) in listed or _uncertain(toks, a))
        for a, b, cls, weak in spans
    ]
    return sorted(out, key=lambda m: m.pos)


def _listed_spans(spans: list[tuple[int, int, str]], toks: list[str]) -> set[tuple[int, int]]:
    """Spans in a list of options: mentions of two or more classes joined by list words, where the
    joining says "options" (an "or" or a slash, three or more items, or "between X and Y"). "A quick and
    steady pace" and "a teenage girl" are descriptions, not lists."""
    ordered = sorted(set(spans))
    listed: set[tuple[int, int]] = set()
    runs: list[tuple[list[tuple[int, int, str]], set[str]]] = []
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        between = toks[prev[1] : cur[0]]
        if between and set(between) <= _LIST_JOINERS:
            if runs and runs[-1][0][-1] == prev:
                runs[-1][0].append(cur)
                runs[-1][1].update(between)
            else:
                runs.append(([prev, cur], set(between)))
    for run, joiners in runs:
        if len({cls for _, _, cls in run}) < 2:
            continue
        between_and = "between" in toks[max(0, run[0][0] - 2) : run[0][0]]
        if joiners & {"or", "/"} or len(run) >= 3 or between_and:
            listed.update((a, b) for a, b, _ in run)
    return listed


def _clause_before(toks: list[str], i: int) -> list[str]:
    """The tokens of the clause before position i (back to the last punctuation)."""
    j = i
    while j > 0 and toks[j - 1] not in _CLAUSE_BREAK:
        j -= 1
    return toks[j:i]


def _uncertain(toks: list[str], i: int) -> bool:
    # Only just before the mention ("I can't tell if it's a man"), not anywhere in the clause: "the
    # recording is unclear but the speaker is clearly male" answers.
    window = " ".join(_clause_before(toks, i)[-UNCERTAIN_WINDOW:])
    return any(f" {p} " in f" {window} " for p in _UNCERTAIN_PHRASES)


def _negated(toks: list[str], i: int) -> bool:
    window = _clause_before(toks, i)[-NEGATION_WINDOW:]
    if any(t in _NEGATORS or t.endswith("n't") for t in window):
        return True
    joined = " ".join(window)
    return any(joined.endswith(p) or f"{p} " in joined for p in _NEGATOR_PHRASES)


def parse_label(text: str, task: str, classes: Sequence[str]) -> str | None:
    """The class an answer gives, or None if it gives none.

    Args:
        text: the model's answer.
        task: task name ("gender", "pitch", ...), selects the synonym table.
        classes: the task's classes (label values as in the data).

    Returns:
        One of `classes`, or None when no class is asserted (see the module docstring for the rules:
        word boundaries, synonyms, negation, first asserted mention wins, weak pronoun evidence).
    """
    if not text or not classes:
        return None
    mentions = [m for m in find_mentions(text, task, classes) if not m.listed]
    asserted = [m.label for m in mentions if not m.negated and not m.weak]
    if asserted:
        return asserted[0]
    negated = {m.label for m in mentions if m.negated and not m.weak}
    if negated:
        remaining = [c for c in classes if c not in negated]
        # Negations that leave several classes still mean the model took a position (it is not
        # "male"), so a pronoun must not override them.
        return remaining[0] if len(remaining) == 1 else None
    weak = [m.label for m in mentions if not m.negated and m.weak]
    return weak[0] if weak else None


_LEAD_IN = re.compile(
    r"^(?:.*?\b(?:says?|said|saying|states?|stated|asks?|asked|words (?:are|were)|transcript(?:ion)? "
    r"(?:is|reads)|sentence (?:is|was)|speaks?|spoken)\b\s*[:,]?\s*)",
    re.IGNORECASE,
)


def extract_transcript(text: str) -> str:
    """The quoted or stated words an answer reports as spoken.

    Args:
        text: an answer to "what was said?".

    Returns:
        The text inside the first pair of double quotes if any (models usually quote the words),
        else the answer with a lead-in such as "The speaker says:" removed.
    """
    if not text:
        return ""
    quoted = re.search(r"[\"“”]([^\"“”]{2,})[\"“”]", text)
    if quoted:
        return quoted.group(1).strip()
    return _LEAD_IN.sub("", text.strip(), count=1).strip()


def normalize_words(text: str) -> str:
    """Lowercase, drop punctuation and collapse spaces (the WER normalisation)."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def word_error_rate(references: Iterable[str], hypotheses: Iterable[str]) -> float:
    """Corpus WER (total edits / total reference words) after :func:`normalize_words`.

    Args:
        references: gold transcripts.
        hypotheses: predicted transcripts, aligned with `references`.

    Returns:
        WER as a float (can exceed 1 when the hypotheses are much longer). 0.0 for no references.
    """
    refs = [normalize_words(r) for r in references]
    hyps = [normalize_words(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return 0.0
    # jiwer rejects empty hypotheses; a placeholder that matches no reference word counts the
    # deletions correctly (one substitution + deletions == deletions for a one-word reference).
    refs2 = [r for r, _ in pairs]
    hyps2 = [h if h else "<empty>" for _, h in pairs]
    return float(jiwer.wer(refs2, hyps2))
