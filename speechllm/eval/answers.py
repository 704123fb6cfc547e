"""The evaluation's answers: the speech model's (audio + transcript + question) and the text LLM's (gold
description + question), and the store that computes answers which do not depend on the trained weights
(the ceiling, the untrained baseline) once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from speechllm.audio import file_stamp
from speechllm.digests import key_digest
from speechllm.eval.tasks import Item
from speechllm.textllm import description_messages, generate_chat

# ----- answers that do not depend on the trained weights, computed once -------------------------------


def reused_answers(cache_dir: str | None, kind: str, key: dict, compute) -> tuple[list[str], bool]:
    """Answers stored under a digest of everything they depend on, or computed and stored.

    The ceiling (the base LLM reading descriptions) and the untrained baseline do not depend on the
    trained weights: a re-evaluation, or the evaluation of another checkpoint of the same model config
    on the same clips, reuses them.

    Args:
        cache_dir: `paths.cache_dir` (None: no reuse).
        kind: what the answers are (part of the file name).
        key: what they depend on (weights digests, prompts, audio file stamps, generation settings).
        compute: () -> answers, when nothing is stored.

    Returns:
        (answers, whether they were reused).
    """
    if not cache_dir:
        return compute(), False
    path = os.path.join(cache_dir, "eval-answers", f"{kind}-{key_digest(key)}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["answers"], True
    answers = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"kind": kind, "answers": answers}, f)
    os.replace(tmp, path)
    return answers, False


class AnswerStore:
    """:func:`reused_answers` under one `cache_dir`, recording which kinds were reused (the report says so)."""

    def __init__(self, cache_dir: str | None):
        self.cache_dir = cache_dir
        self.reused: list[str] = []

    def get(self, kind: str, key: dict, compute) -> list[str]:
        answers, hit = reused_answers(self.cache_dir, kind, key, compute)
        if hit:
            self.reused.append(kind)
        return answers


def text_answers_key(llm_digest: str, rows: Sequence[dict], items: Sequence[Item], system: str | None,
                     gen: dict) -> dict:  # fmt: skip
    """What the text LLM's answers depend on: its weights and the chats exactly as it reads them (the
    default system prompt included)."""
    return {"llm": llm_digest, "gen": gen, "chats": description_chats(rows, items, system)}


def speech_answers_key(weights: dict[str, str], config: dict, rows: Sequence[dict], items: Sequence[Item],
                gen: dict) -> dict:  # fmt: skip
    """What a speech model's answers depend on: its weights' digests and config, the clips and questions."""
    return {
        "config": config,
        "weights": weights,
        "requests": [
            (
                rows[it.row].get("clip_id"),
                rows[it.row]["audio_path"],
                file_stamp(rows[it.row]["audio_path"]),
                rows[it.row].get("transcript"),
                it.question,
            )
            for it in items
        ],  # fmt: skip
        "gen": gen,
    }


# ----- answering -------------------------------------------------------------------------------------


def speech_answers(
    model, rows: Sequence[dict], items: Sequence[Item], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """The speech model's answers: audio + transcript + question per item, batched.

    Args:
        model: a SpeechLM.
        rows: the evaluated clips.
        items: questions (``item.row`` indexes `rows`).
        max_new_tokens: answer length limit.
        batch_size: rows per generate call.

    Returns:
        One answer per item.
    """
    reqs = [
        {
            "clip_id": rows[it.row].get("clip_id"),
            "audio_path": rows[it.row]["audio_path"],
            "transcript": rows[it.row].get("transcript"),
            "instruction": it.question,
        }
        for it in items
    ]
    # A clip's questions side by side: in one batch they share the audio and the prompt before the
    # question, which SpeechLM.generate then computes once.
    order = sorted(range(len(reqs)), key=lambda i: (items[i].row, i))
    out: list[str] = [""] * len(reqs)
    with torch.no_grad():
        for start in tqdm(
            range(0, len(order), batch_size), desc="speech answers", unit="batch", disable=not reqs
        ):
            idx = order[start : start + batch_size]
            answers = model.generate([reqs[i] for i in idx], max_new_tokens=max_new_tokens)
            for i, answer in zip(idx, answers, strict=True):
                out[i] = answer.strip()
    return out


def description_chats(
    rows: Sequence[dict], items: Sequence[Item], system: str | None = None
) -> list[list[dict]]:
    """The chats the text LLM reads: each item's question about its clip's gold description (see
    `text_answers` for `system`)."""
    return [description_messages(rows[it.row]["description"], it.question, system) for it in items]


def text_answers(
    llm,
    tokenizer,
    rows: Sequence[dict],
    items: Sequence[Item],
    *,
    max_new_tokens: int,
    batch_size: int,
    system: str | None = None,
) -> list[str]:
    """The text LLM's answers reading each clip's gold description.

    Args:
        system: the system prompt (None: the one target generation uses by default, for the ceiling;
            "": none, so the chat template's default, as the speech prompt without a system message).
    """
    convs = description_chats(rows, items, system)
    return generate_chat(llm, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size)
