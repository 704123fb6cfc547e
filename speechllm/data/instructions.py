"""Instruction pools and answer templates used to build training targets.

Training teaches the speech model to follow *description-style* instructions only (the DeSTA
recipe); evaluation asks questions it never saw. So every instruction or template any training
mode uses lives here, and :func:`all_training_instructions` exposes the full set so the evaluation
pool can be checked to be disjoint from it. Text replay (general chats) is not part of this set.

Pools:
    ``desta2``: DeSTA2's single instruction.
    ``desta25``: a DeSTA2.5-style pool of open, description-style requests; one is drawn per clip,
    deterministically from the seed and the clip id (:func:`pick_instruction`).
    ``speaker``: description requests that name the speaker's attributes (gender, accent, pitch, pace,
    loudness). A small LLM asked an open "Describe the audio" mostly ignores the attribute tags it
    reads; asked this way its answers state them, so its self-output targets carry them.
    ``attributes``: short questions about one attribute each, the `task.training_questions` of every
    attribute YAML that has them (gender, accent, pitch, speed and volume in the package; an attribute a
    user adds is asked about once its YAML lists some), then :data:`CONTENT_QUESTIONS`. Their answers
    are a sentence, so the attribute is a large share of the target's tokens; draw several per clip
    with ``target.instructions_per_clip``.
"""

from __future__ import annotations

import hashlib
import re

from speechllm.attributes import attribute_tasks, mentions

INSTRUCTION_POOLS: dict[str, list[str]] = {
    "desta2": ["What can you hear from the audio?"],
    "desta25": [
        "What can you hear from the audio?",
        "Describe the audio clip.",
        "Describe what you hear in this recording.",
        "Tell me about this audio.",
        "Give a short description of the recording.",
        "Summarize what is in this audio clip.",
        "Describe the speaker and what they say.",
        "What is going on in this recording?",
        "Listen to the clip and describe it.",
        "Characterize the voice in this recording.",
        "Write a brief caption for this audio.",
        "Describe how the person in the recording speaks.",
    ],
    "speaker": [
        "Describe the speaker's voice: their gender, accent, pitch, speaking pace and loudness.",
        "Who is speaking, with what accent, and how (pitch, pace, volume)?",
        "Describe the speaker (gender and accent) and how they sound (pitch, speed, volume).",
        "List what you can tell about the speaker: gender, accent, pitch, speed and volume.",
        "Give a profile of the speaker: gender, accent, voice pitch, pace and loudness.",
        "Summarize the speaker's characteristics: gender, accent, pitch, speed and volume.",
        "Describe the person talking and their way of speaking (accent, pitch, pace, volume).",
        "Sketch the talker for me: man or woman, accent, and how high, fast and loud they speak.",
    ],
}

# The `attributes` pool's questions about what was said (the transcript has no task block).
CONTENT_QUESTIONS: tuple[str, ...] = ("What does the speaker say?", "What words are spoken in this clip?")

# Words of an instruction that asks what was said (the `label` answer is then the transcript).
CONTENT_KEYWORDS: tuple[str, ...] = ("say", "says", "said", "words", "spoken", "transcribe")


def attribute_keywords() -> dict[str, tuple[str, ...]]:
    """Which attribute an instruction asks about, by the words it uses (whole words or phrases,
    lowercase): each attribute YAML's `task.keywords`. Verified self-output (`target.verify`) requires
    the answer to state each asked attribute correctly."""
    return {name: task.keywords for name, task in attribute_tasks().items() if task.keywords}


def asked_attributes(instruction: str) -> list[str]:
    """The attributes an instruction asks about (see :func:`attribute_keywords`), in task order."""
    return [name for name, keys in attribute_keywords().items() if mentions(instruction, keys)]


def asks_content(instruction: str) -> bool:
    """Whether an instruction asks what was said (see :data:`CONTENT_KEYWORDS`)."""
    return bool(set(re.findall(r"[a-z]+", instruction.lower())) & set(CONTENT_KEYWORDS))


def label_clauses() -> dict[str, str]:
    """`label` mode, the "human data" baseline: the answer is assembled from gold label columns, one
    clause per available label (each attribute YAML's `task.clause`, `{v}` the value), in task order.
    Keys are label names (the part after `label_`); labels without a clause are left out."""
    return {name: task.clause for name, task in attribute_tasks().items() if task.clause}


# The transcript, when the data has one, comes first (what is said is the most salient content).
LABEL_TRANSCRIPT_TEMPLATE = 'Someone says: "{v}"'

# `paraphrase` mode (SDFT-style): the frozen LLM rewrites the template answer in its own words.
PARAPHRASE_TEMPLATE = (
    "Rewrite the following answer in your own words. Keep every fact and add nothing.\n\n"
    "Question: {instruction}\nAnswer: {answer}"
)


def pick_instruction(pool: str | list[str], clip_id: str, seed: int = 0) -> str:
    """Choose one instruction for a clip, deterministically.

    The choice depends only on (seed, clip_id), not on row order, shard or batch, so reruns and
    sharded runs agree.

    Args:
        pool: a pool name from :data:`INSTRUCTION_POOLS` or an explicit list of instructions.
        clip_id: the clip's identifier.
        seed: changes the assignment of instructions to clips.

    Returns:
        The chosen instruction.
    """
    items = resolve_pool(pool)
    if len(items) == 1:
        return items[0]
    digest = hashlib.sha256(f"{seed}:{clip_id}".encode()).digest()
    return items[int.from_bytes(digest[:8], "big") % len(items)]


def pick_instructions(pool: str | list[str], clip_id: str, seed: int = 0, count: int = 1) -> list[str]:
    """Choose `count` distinct instructions for a clip, deterministically.

    The first is :func:`pick_instruction`'s choice, so `count=1` keeps the single-instruction
    assignment; the others follow in an order hashed from (seed, clip_id, instruction).

    Args:
        pool: a pool name from :data:`INSTRUCTION_POOLS` or an explicit list of instructions.
        clip_id: the clip's identifier.
        seed: changes the assignment of instructions to clips.
        count: how many, at most the pool's size.

    Returns:
        `count` distinct instructions.

    Raises:
        ValueError: `count` is below 1 or above the pool's size.
    """
    items = resolve_pool(pool)
    distinct = set(items)
    if not 1 <= count <= len(distinct):
        raise ValueError(f"cannot draw {count} distinct instructions from a pool of {len(distinct)}")
    first = pick_instruction(items, clip_id, seed)
    rest = sorted(
        distinct - {first}, key=lambda text: hashlib.sha256(f"{seed}:{clip_id}:{text}".encode()).digest()
    )
    return [first, *rest[: count - 1]]


def resolve_pool(pool: str | list[str]) -> list[str]:
    """Return the instructions of a pool given by name or as a list.

    Args:
        pool: a key of :data:`INSTRUCTION_POOLS` or a non-empty list of strings.

    Returns:
        The list of instructions.

    Raises:
        ValueError: unknown pool name, or an empty/non-string list.
    """
    if pool == "attributes":
        return attribute_questions()
    if isinstance(pool, str):
        if pool not in INSTRUCTION_POOLS:
            known = sorted([*INSTRUCTION_POOLS, "attributes"])
            raise ValueError(f"unknown instruction pool {pool!r}; known: {known}")
        return list(INSTRUCTION_POOLS[pool])
    items = list(pool)
    if not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise ValueError("an instruction pool must be a non-empty list of non-empty strings")
    return items


def attribute_questions() -> list[str]:
    """The `attributes` pool: every attribute task's training questions in task order, then
    :data:`CONTENT_QUESTIONS`."""
    questions = [q for task in attribute_tasks().values() for q in task.training_questions]
    return questions + list(CONTENT_QUESTIONS)


def all_training_instructions() -> set[str]:
    """Every instruction or template any training target mode uses (replay excluded).

    Returns:
        A set of strings: all pool instructions, label clause templates, the transcript
        template and the paraphrase template.
    """
    out: set[str] = set()
    for items in INSTRUCTION_POOLS.values():
        out.update(items)
    out.update(attribute_questions())
    out.update(label_clauses().values())
    out.add(LABEL_TRANSCRIPT_TEMPLATE)
    out.add(PARAPHRASE_TEMPLATE)
    return out
