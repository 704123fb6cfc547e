"""Greedy generation and scoring for plain text LLMs (the ceiling and the drift checks).

Generation is the left-padded, length-sorted batching that target generation uses
(`speechllm.data.targets.generate_texts`); this module renders the chats and scores answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from speechllm.data.targets import GenerationConfig, generate_texts


def chat_prompts(tokenizer, conversations: Sequence[list[dict]]) -> list[str]:
    """Render chats with the tokenizer's chat template, ready for the assistant's turn."""
    return [
        tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=True)
        for msgs in conversations
    ]


def _greedy(model, tokenizer, conversations, max_new_tokens: int, batch_size: int):
    model.eval()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size)
    return generate_texts(model, tokenizer, chat_prompts(tokenizer, conversations), gen)


def generate_chat_ids(
    model, tokenizer, conversations: Sequence[list[dict]], *, max_new_tokens: int = 64, batch_size: int = 16
) -> list[list[int]]:
    """Greedy answer token ids of a text LLM to chat conversations.

    Args:
        model: an ``AutoModelForCausalLM``-like model.
        tokenizer: its tokenizer (with a chat template).
        conversations: lists of {"role", "content"} messages, each ending with a user turn.
        max_new_tokens: generation length limit.
        batch_size: rows per generate call.

    Returns:
        Per conversation, the new token ids up to and including the end-of-turn token.
    """
    return [g.token_ids for g in _greedy(model, tokenizer, conversations, max_new_tokens, batch_size)]


def generate_chat(
    model, tokenizer, conversations: Sequence[list[dict]], *, max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy answers of a text LLM to chat conversations.

    Args:
        model: an ``AutoModelForCausalLM``-like model.
        tokenizer: its tokenizer (with a chat template).
        conversations: lists of {"role", "content"} messages, each ending with a user turn.
        max_new_tokens: generation length limit.
        batch_size: rows per generate call.

    Returns:
        The decoded answers (special tokens removed, stripped), one per conversation.
    """
    return [g.text for g in _greedy(model, tokenizer, conversations, max_new_tokens, batch_size)]


@torch.no_grad()
def answer_logprobs(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    answers: Sequence[str | list[int]],
    *,
    batch_size: int = 8,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Next-token log-probabilities of a model over given answers to chat prompts.

    Args:
        model: a causal LM (a plain LLM or a SpeechLM's language model).
        tokenizer: its tokenizer.
        conversations: chats ending with a user turn.
        answers: the assistant answer to score after each chat: token ids (exact, e.g. from
            :func:`generate_chat_ids`) or text (tokenized without special tokens).
        batch_size: rows per forward pass.

    Returns:
        Per conversation: (log-probabilities over the vocabulary at each answer position, the answer's
        token ids). Shapes: (answer_len, vocab), (answer_len,). Empty answers give zero-length tensors.
    """
    prompts = chat_prompts(tokenizer, conversations)
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk_p = prompts[start : start + batch_size]
        chunk_a = answers[start : start + batch_size]
        p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk_p]
        a_ids = [
            list(a) if not isinstance(a, str) else tokenizer(a, add_special_tokens=False)["input_ids"]
            for a in chunk_a
        ]
        seqs = [p + a for p, a in zip(p_ids, a_ids, strict=True)]
        width = max(len(s) for s in seqs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Right padding: positions of real tokens stay 0..len-1, so both models see identical inputs.
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for i, (p, a) in enumerate(zip(p_ids, a_ids, strict=True)):
            # Logits at position t predict token t+1: answer tokens sit at len(p)..len(p)+len(a)-1.
            lo = len(p) - 1
            results.append((logp[i, lo : lo + len(a)], torch.tensor(a, dtype=torch.long)))
    return results
