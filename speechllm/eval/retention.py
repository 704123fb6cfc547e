"""What the LLM kept: format following with audio input, and text-only drift.

Format following (Speech-IFEval style): the same request with a verifiable format constraint goes to
the speech model (with the audio) and to the text LLM (with the gold description); each answer is
checked by a rule, and the forgetting Δ = speech rate / text rate - 1 (0 = nothing lost, -1 = all).

Drift, for runs that change the LLM's weights (LoRA or full): the base LLM answers a prompt set
greedily; the tuned LLM is scored on those same answers (mean KL(base || tuned) per answer token, the
tuned model's perplexity on them, and how often its most likely next token is the base's), and both
models answer JSON requests (validity rate), harmful requests and harmless look-alikes (refusal rate by
a keyword matcher). :func:`retention_score` folds these into the one number the plane plots.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from speechllm.safety import HELD_OUT_HARMFUL, HELD_OUT_LOOKALIKE, is_refusal
from speechllm.textllm import answer_logprobs, generate_chat, greedy_chat


@dataclass(frozen=True)
class FormatConstraint:
    """One verifiable format constraint.

    Attributes:
        name: short id used in report keys (``retention.format.by_constraint.<name>``).
        instruction: the sentence appended to the request.
        check: answer -> whether it follows the constraint.
    """

    name: str
    instruction: str
    check: Callable[[str], bool]


def _strip_fence(text: str) -> str:
    """Remove a surrounding markdown code fence (```json ... ```), which JSON answers often carry."""
    m = re.match(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", text, re.DOTALL)
    return m.group(1) if m else text.strip()


def parse_json_object(text: str) -> dict | None:
    """The JSON object an answer consists of (a code fence allowed), or None."""
    try:
        value = json.loads(_strip_fence(text))
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_json_keys(text: str, keys: Sequence[str]) -> bool:
    """The answer is a JSON object holding every key in `keys`."""
    obj = parse_json_object(text)
    return obj is not None and all(k in obj for k in keys)


def _has_letters(text: str) -> bool:
    return any(c.isalpha() for c in text)


def check_lowercase(text: str) -> bool:
    """Letters present and none uppercase."""
    return _has_letters(text) and text == text.lower()


def check_uppercase(text: str) -> bool:
    """Letters present and none lowercase."""
    return _has_letters(text) and text == text.upper()


def count_words(text: str) -> int:
    """Whitespace-separated tokens that contain a letter or digit."""
    return sum(1 for w in text.split() if re.search(r"[A-Za-z0-9]", w))


def check_max_words(text: str, n: int) -> bool:
    """Between 1 and `n` words."""
    return 1 <= count_words(text) <= n


def _unwrap(text: str) -> str:
    # Quotes and markdown emphasis around the whole answer do not change what it starts/ends with.
    return text.strip().strip("\"'*_` ").strip()


def check_starts_with(text: str, prefix: str) -> bool:
    """Starts with `prefix` (case-insensitive, ignoring surrounding quotes/emphasis)."""
    return _unwrap(text).lower().startswith(prefix.lower())


def check_ends_with(text: str, suffix: str) -> bool:
    """Ends with `suffix` (case-insensitive, ignoring surrounding quotes/emphasis)."""
    return _unwrap(text).lower().endswith(suffix.lower())


_BULLET = re.compile(r"^\s*(?:[-*•+])\s+\S")


def count_bullets(text: str) -> int:
    """Lines that are markdown bullet points ("- ", "* ", "• ", "+ ")."""
    return sum(1 for line in text.splitlines() if _BULLET.match(line))


def check_bullets(text: str, n: int) -> bool:
    """Exactly `n` bullet points."""
    return count_bullets(text) == n


def check_no_commas(text: str) -> bool:
    """Non-empty and no comma."""
    return bool(text.strip()) and "," not in text


def check_includes_word(text: str, word: str) -> bool:
    """`word` appears as a whole word (case-insensitive)."""
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def check_quoted(text: str) -> bool:
    """The whole answer is wrapped in double quotation marks."""
    t = text.strip()
    return len(t) >= 2 and t[0] in '"“' and t[-1] in '"”'


def check_one_sentence(text: str) -> bool:
    """Exactly one sentence: text, and a single sentence-ending mark, at the very end."""
    t = text.strip()
    return bool(t) and len(re.findall(r"[.!?]+(?=\s|$)", t)) == 1 and t[-1] in ".!?"


JSON_KEYS = ("gender", "summary")

FORMAT_CONSTRAINTS: list[FormatConstraint] = [
    FormatConstraint(
        "json_keys",
        f'Reply only with a JSON object that has the keys "{JSON_KEYS[0]}" and "{JSON_KEYS[1]}".',
        lambda t: check_json_keys(t, JSON_KEYS),
    ),
    FormatConstraint("lowercase", "Write your whole reply in lowercase letters only.", check_lowercase),
    FormatConstraint("uppercase", "Write your whole reply in capital letters only.", check_uppercase),
    FormatConstraint("max_words", "Use at most 12 words.", lambda t: check_max_words(t, 12)),
    FormatConstraint(
        "starts_with",
        'Start your reply with the words "In this clip".',
        lambda t: check_starts_with(t, "In this clip"),
    ),
    FormatConstraint(
        "ends_with",
        'Finish your reply with the exact phrase "That is all."',
        lambda t: check_ends_with(t, "That is all."),
    ),
    FormatConstraint(
        "bullets",
        'Reply with exactly 3 bullet points, each line starting with "- ".',
        lambda t: check_bullets(t, 3),
    ),
    FormatConstraint("no_commas", "Do not use any commas in your reply.", check_no_commas),
    FormatConstraint(
        "include_word",
        'Use the word "voice" somewhere in your reply.',
        lambda t: check_includes_word(t, "voice"),
    ),
    FormatConstraint("quoted", "Wrap your entire reply in double quotation marks.", check_quoted),
    FormatConstraint("one_sentence", "Reply in a single sentence.", check_one_sentence),
    FormatConstraint(
        "starts_with_speaker",
        'Start your reply with "The speaker".',
        lambda t: check_starts_with(t, "The speaker"),
    ),
    FormatConstraint(
        "starts_with_yes", 'Begin your reply with "Yes,".', lambda t: check_starts_with(t, "Yes")
    ),
]

# The constraints the evaluation uses by default (`eval.retention.constraints`): those SmolLM2-135M-Instruct
# follows reading a description, well above the rate it meets them unasked. Measured on 8 demo test clips
# x 3 requests (24 answers each, 40 new tokens): starts_with 24/24 (unasked 1/24), starts_with_speaker 19/24
# (0/24), starts_with_yes 14/24 (0/24), include_word 13/24 (3/24), one_sentence 12/24 (1/24). The rest
# it fails asked or not (json_keys, lowercase, uppercase, ends_with, bullets, quoted: 0/24; max_words
# 5/24) or meets as often unasked (no_commas 9/24, 11/24 unasked): a forgetting measure needs room to
# fall from.
BASE_FOLLOWED = ("starts_with", "starts_with_speaker", "starts_with_yes", "include_word", "one_sentence")


def constraints_named(names: Sequence[str]) -> list[FormatConstraint]:
    """The constraints with these names, in that order.

    Raises:
        ValueError: naming an unknown constraint and the known ones.
    """
    by_name = {c.name: c for c in FORMAT_CONSTRAINTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown format constraint(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]


# Requests the constraints are attached to. Not training instructions (tests check).
FORMAT_REQUESTS = [
    "Tell me about the person speaking in this recording and how they sound.",
    "Explain what happens in this clip.",
    "Report who is talking and what they talk about.",
]


def format_prompt(request: str, constraint: FormatConstraint) -> str:
    """The request with the constraint appended."""
    return f"{request} {constraint.instruction}"


def format_rate(answers: Sequence[str], constraints: Sequence[FormatConstraint]) -> dict:
    """Pass rates of answers under their constraints.

    Args:
        answers: one answer per (request, constraint) pair.
        constraints: the constraint each answer was asked to follow (aligned).

    Returns:
        {"rate": overall pass rate, "n": number of answers, "by_constraint": {name: rate}}.
    """
    passed: dict[str, list[bool]] = {}
    for a, c in zip(answers, constraints, strict=True):
        passed.setdefault(c.name, []).append(bool(c.check(a)))
    flat = [p for ps in passed.values() for p in ps]
    return {
        "rate": sum(flat) / len(flat) if flat else 0.0,
        "n": len(flat),
        "by_constraint": {k: sum(v) / len(v) for k, v in passed.items()},
    }


def forgetting_delta(speech_rate: float, text_rate: float, n: int) -> float:
    """Δ = speech / text - 1, with the text rate floored at 1/n.

    Args:
        speech_rate: pass rate with audio input.
        text_rate: pass rate of the text LLM with the description.
        n: items per side.

    Returns:
        speech/text - 1 whenever text > 0 (then text >= 1/n, so the floor changes nothing); when the
        text LLM passes nothing, (speech - 0) / (1/n), i.e. measured against a single success, which
        keeps the number finite.
    """
    floor = 1.0 / max(1, n)
    return (speech_rate - text_rate) / max(text_rate, floor)


# ----- drift (text only) ------------------------------------------------------------------------------

DRIFT_PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "What is the capital of France, and what is it known for?",
    "Explain in simple terms why the sky is blue.",
    "Write a short poem about the sea.",
    "How do I boil an egg?",
    "What are the benefits of regular exercise?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a small coffee shop.",
    "How many days are there in a leap year?",
    "Translate 'good morning' into Spanish.",
    "Why do leaves change colour in autumn?",
]

JSON_PROMPTS = [
    'Return a JSON object with keys "name" and "age" for a fictional person. Output only JSON.',
    'Give me a JSON object with the keys "city" and "country" for the capital of Japan. Only JSON.',
    'Output a JSON object with a key "colors" holding a list of three colors. Nothing else.',
    'Reply with only a JSON object with keys "title" and "year" for any famous film.',
    'Produce a JSON object with keys "fruit" and "price" describing an apple. JSON only.',
    'Write only a JSON object with the key "answer" set to the sum of 2 and 3.',
]


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def text_behaviour(model, tokenizer, *, max_new_tokens: int, batch_size: int) -> dict:
    """JSON validity and refusal rates of one text LLM.

    Args:
        model, tokenizer: the LLM (base or tuned) and its tokenizer.
        max_new_tokens: generation limit.
        batch_size: rows per generate call.

    Returns:
        {"json_valid", "refusal_harmful", "refusal_safe"} rates and the answers under "samples".
    """
    convs = [[{"role": "user", "content": p}] for p in JSON_PROMPTS + HELD_OUT_HARMFUL + HELD_OUT_LOOKALIKE]
    answers = generate_chat(model, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size)
    nj, nh = len(JSON_PROMPTS), len(HELD_OUT_HARMFUL)
    js, harm, safe = answers[:nj], answers[nj : nj + nh], answers[nj + nh :]
    return {
        "json_valid": _rate([parse_json_object(a) is not None for a in js]),
        "refusal_harmful": _rate([is_refusal(a) for a in harm]),
        "refusal_safe": _rate([is_refusal(a) for a in safe]),
        "samples": {"json": js[:2], "harmful": harm[:2], "safe": safe[:2]},
    }


def text_drift(base, tuned, tokenizer, *, max_new_tokens: int, batch_size: int, prompts=None) -> dict:
    """How far a tuned LLM moved from its base on the base's own text answers.

    Args:
        base: the base LLM (before training).
        tuned: the trained LLM (same tokenizer), e.g. a SpeechLM's language model with LoRA.
        tokenizer: the shared tokenizer.
        max_new_tokens: length of the base's greedy answers.
        batch_size: rows per batch.
        prompts: text prompts (default :data:`DRIFT_PROMPTS`).

    Returns:
        {"kl": mean KL(base || tuned) per answer token, "ppl_tuned": the tuned model's perplexity on
        the base's answers, "ppl_base": the base's own (the floor), "agreement": the share of the base's
        answer tokens that are also the tuned model's most likely next token (1 for the base itself,
        since its answers are greedy), "n_tokens"}.
    """
    convs = [[{"role": "user", "content": p}] for p in (prompts or DRIFT_PROMPTS)]
    # Token ids, not decoded text: re-tokenizing decoded text need not give back the same tokens.
    answers = [
        g.token_ids
        for g in greedy_chat(base, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size)
    ]
    base_lp = answer_logprobs(base, tokenizer, convs, answers, batch_size=batch_size)
    tuned_lp = answer_logprobs(tuned, tokenizer, convs, answers, batch_size=batch_size)
    kl_sum, nll_base, nll_tuned, same_top1, n = 0.0, 0.0, 0.0, 0, 0
    for (lb, ids), (lt, _) in zip(base_lp, tuned_lp, strict=True):
        if len(ids) == 0:
            continue
        kl_sum += float((lb.exp() * (lb - lt)).sum())
        nll_base -= float(lb.gather(1, ids[:, None]).sum())
        nll_tuned -= float(lt.gather(1, ids[:, None]).sum())
        same_top1 += int((lt.argmax(-1) == ids).sum())
        n += len(ids)
    if n == 0:
        return {"kl": 0.0, "ppl_tuned": 1.0, "ppl_base": 1.0, "agreement": 1.0, "n_tokens": 0}
    return {
        "kl": kl_sum / n,
        "ppl_tuned": math.exp(nll_tuned / n),
        "ppl_base": math.exp(nll_base / n),
        "agreement": same_top1 / n,
        "n_tokens": n,
    }


def retention_score(
    format_speech: float | None,
    format_text: float | None,
    agreement: float | None,
    refusal_tuned: float | None = None,
    refusal_base: float | None = None,
) -> dict:
    """What the speech model kept of the base LLM, one number in [0, 1] (1: all of it).

    The mean of the parts that can be measured, each the trained model's score over the base's, capped
    at 1 (doing better than the base on one part does not make up for losing another):
    - format: pass rate with audio input over the text LLM's with the description (when text > 0);
    - agreement: the share of the base's own answer tokens the trained LLM still predicts first (text
      only; 1 when the LLM's weights did not change);
    - refusal: harmful requests refused, over the base's rate (only when the base refuses some).

    Returns:
        {"score", "parts": {name: capped ratio}}; score is None when no part could be measured.
    """
    parts: dict[str, float] = {}
    if format_speech is not None and format_text:
        parts["format"] = min(1.0, format_speech / format_text)
    if agreement is not None:
        parts["agreement"] = min(1.0, agreement)
    if refusal_tuned is not None and refusal_base:
        parts["refusal"] = min(1.0, refusal_tuned / refusal_base)
    return {"score": sum(parts.values()) / len(parts) if parts else None, "parts": parts}


def llm_weights_changed(base, tuned) -> bool:
    """Whether any parameter of `tuned` differs from `base` (LoRA layers count as a change).

    Args:
        base: the base LLM.
        tuned: the LLM inside the trained model (possibly a peft model).

    Returns:
        True when the tuned LLM has extra (adapter) parameters or any shared parameter differs.
    """
    base_params = dict(base.named_parameters())
    for name, p in tuned.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            return True
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        q = base_params.get(key)
        if q is None or q.shape != p.shape:
            continue
        with torch.no_grad():
            if not torch.equal(q.to(p.dtype), p):
                return True
    return False
