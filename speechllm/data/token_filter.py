"""Token filtering: do not train on target tokens the base LLM finds too unlikely.

Each target token is scored with the frozen base LLM reading the same text context the target was
written for (description + instruction through the chat template, the target as the assistant
turn). Tokens with probability below a threshold (default 0.4, i.e. perplexity above 2.5) get
``keep_mask`` 0 and are left out of the loss (label -100): training on them is what pulls the
model away from its own distribution and drives forgetting.

The target is tokenized on its own as ``tokenizer(target, add_special_tokens=False)``, exactly as
the speech model's collator tokenizes the assistant turn, so ``keep_mask`` lines up with the
training labels token for token.
"""

from __future__ import annotations

from speechllm.textllm import chat_prompt, description_messages, target_token_probs


def keep_mask(probs: list[float], threshold: float = 0.4) -> list[int]:
    """1 for tokens to train on (probability >= threshold), 0 for tokens to mask.

    Args:
        probs: per-token probabilities.
        threshold: minimum probability to keep a token, in [0, 1].

    Returns:
        A 0/1 list aligned with ``probs``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"token filter threshold must be in [0, 1], got {threshold}")
    return [1 if p >= threshold else 0 for p in probs]


def add_keep_masks(
    rows: list[dict],
    model,
    tokenizer,
    *,
    threshold: float = 0.4,
    system: str | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """Add ``target_token_ids`` and ``keep_mask`` to target rows, in place.

    The context is :func:`speechllm.textllm.description_messages` of the row's description and
    instruction, whatever the mode that wrote the target: the question is how natural the target is
    for the base LLM reading that clip's description.

    Args:
        rows: dicts with ``description``, ``instruction`` and ``target``.
        model, tokenizer: the base LLM.
        threshold: keep tokens with probability >= threshold.
        system: the system prompt passed to ``description_messages`` (None: its default).
        batch_size: sequences per forward pass.

    Returns:
        The same rows.
    """
    prompts = [
        chat_prompt(tokenizer, description_messages(r["description"], r["instruction"], system)) for r in rows
    ]
    scored = target_token_probs(model, tokenizer, prompts, [r["target"] for r in rows], batch_size)
    for row, (ids, probs) in zip(rows, scored, strict=True):
        row["target_token_ids"] = ids
        row["keep_mask"] = keep_mask(probs, threshold)
    return rows


def masked_fraction(masks) -> dict:
    """How many target tokens a set of keep masks leaves out of training.

    Args:
        masks: iterable of 0/1 lists.

    Returns:
        ``{"tokens": total, "masked": count of zeros, "masked_fraction": masked / tokens}``
        (fraction 0.0 when there are no tokens).
    """
    tokens = masked = 0
    for mask in masks:
        tokens += len(mask)
        masked += sum(1 for m in mask if not m)
    return {
        "tokens": tokens,
        "masked": masked,
        "masked_fraction": round(masked / tokens, 4) if tokens else 0.0,
    }
