"""The alignment target of the audio embeddings: the token embeddings of the clip's description.

See `speechllm.train.align` for why and how training uses it. This module holds the part the model
itself needs: per-slot target token ids for a batch, and the distance of the audio slots from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


class AlignmentTargets:
    """Turns alignment texts into per-slot token ids for a batch.

    Args:
        tokenizer: the LLM's tokenizer.
        filler: text whose first token fills the slots past the description.
    """

    def __init__(self, tokenizer, filler: str = "\n"):
        self.tokenizer = tokenizer
        ids = tokenizer(filler, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"align.filler {filler!r} tokenizes to nothing")
        self.filler_id = ids[0]
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._cache[text]

    def __call__(self, texts: Sequence[str | None], slots: Sequence[int]) -> torch.Tensor:
        """Token ids per audio slot: the text's tokens, then the filler; -100 where a clip has no slot
        or no text (that clip is not aligned).

        Shapes: -> (clips, max(slots)).
        """
        out = torch.full((len(texts), max(slots, default=0)), IGNORE_INDEX, dtype=torch.long)
        for i, (text, n) in enumerate(zip(texts, slots, strict=True)):
            if not text:
                continue
            ids = self.ids(text)[:n]
            out[i, :n] = torch.tensor(ids + [self.filler_id] * (n - len(ids)), dtype=torch.long)
        return out


def alignment_loss(audio_embeds: torch.Tensor, slot_mask: torch.Tensor, align_ids: torch.Tensor,
                   token_embeddings: torch.Tensor, mean_square: float) -> torch.Tensor:  # fmt: skip
    """Mean squared distance between audio slots and their target token embeddings, in units of the
    token embeddings' mean square (so about 2 is as far as a random token; 0 is the text itself).

    Args:
        audio_embeds: adapter output. Shapes: (clips, slots, hidden).
        slot_mask: valid slots. Shapes: (clips, slots).
        align_ids: target token id per slot, -100 for none. Shapes: (clips, >= 0).
        token_embeddings: the LLM's input embedding matrix. Shapes: (vocab, hidden).
        mean_square: the embedding matrix's mean square (computed once by the caller: it is large).

    Returns:
        A scalar (0 when nothing is aligned).
    """
    width = min(audio_embeds.shape[1], align_ids.shape[1])
    ids = align_ids[:, :width].to(audio_embeds.device)
    keep = (ids != IGNORE_INDEX) & slot_mask[:, :width]
    if not bool(keep.any()):
        return audio_embeds.sum() * 0.0
    target = token_embeddings[ids[keep]].detach().to(audio_embeds.dtype)
    return ((audio_embeds[:, :width][keep] - target).float().pow(2).mean() / mean_square).to(
        audio_embeds.dtype
    )
