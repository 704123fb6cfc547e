"""Alignment: pull each clip's audio embeddings toward the token embeddings of its own description.

Why: trained only through a frozen LLM's next-token loss, the adapter learns a soft prompt that moves
the answer to the training questions and little else. On the demo, an adapter that learned gender to
0.93 on its one training question (likelihood of "The speaker is male." vs "... female.") was at
chance on three of five unseen gender questions. The answer depends on the audio only through a
few attribute tokens among many, and the LLM reads the soft prompt differently under each question.

Alignment gives the adapter a direct, dense target instead: the i-th audio embedding should equal the
LLM's embedding of the i-th token of the clip's description, rendered in words the LLM reads well
(`describe.render`, natural sentences by default: "A man with a Scottish accent speaks, in a low
voice, quickly and quietly."). Slots past the text are pulled toward a filler token (a newline).
An adapter that meets this target writes the description *as text* into the prompt, which the frozen
LLM reads under any question, as it reads the description itself. The loss needs no LLM pass, so an
alignment-only warm-up (`align.pretrain_steps`) costs a fraction of one training step per step; during
training the same loss is added to the cross-entropy (`align.weight`), keeping the audio embeddings
text-like while the next-token loss teaches the answers. (DiVA and others align speech to text
through the LLM's outputs; this aligns the inputs, which is cheaper.)

Texts are built from the clip's described attribute values (speaking rate, pitch and volume are
measured from the signal; gender and accent come from labels), never from the audio of other clips.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from speechllm.audio import file_stamp
from speechllm.describe.registry import load_attribute_config
from speechllm.describe.render import RENDERERS, render
from speechllm.digests import key_digest, weights_digest
from speechllm.model.alignment import AlignmentTargets, alignment_loss
from speechllm.model.encoder import pad_features

logger = logging.getLogger(__name__)


class AlignmentText:
    """The text a clip's audio embeddings are aligned to, rendered from its described attribute values.

    Args:
        renderer: a `speechllm.describe.render` renderer name (`natural`, `sentences`, `desta2`).
        attributes: which attributes to mention, in order (values a clip lacks are left out).
        attributes_dir: folder of attribute YAMLs (None: conf/attributes).

    Raises:
        KeyError: an unknown renderer or attribute, naming the known ones.
    """

    def __init__(self, renderer: str, attributes: Sequence[str], attributes_dir: str | None = None):
        import speechllm.describe  # noqa: F401  (registers the attribute extractors the configs belong to)

        if renderer not in RENDERERS:
            raise KeyError(f"unknown renderer {renderer!r}; choose one of {sorted(RENDERERS)}")
        self.renderer = renderer
        self.attributes = list(attributes)
        self.configs = {a: load_attribute_config(a, attributes_dir) for a in self.attributes}

    def __call__(self, row: dict) -> str:
        """One described row -> its text ("" when it has none of the attributes)."""
        return render(self.renderer, dict(row), self.attributes, self.configs).strip()


# Part of every stored warm-up's key: raise it when the warm-up's computation changes.
WARMUP_VERSION = 3


def pretrain_alignment(model, rows: Sequence[dict], texts: Sequence[str], features: Callable[[dict], torch.Tensor],
                       *, steps: int, batch_size: int, learning_rate: float, seed: int,
                       filler: str = "\n", cache_dir: str | None = None,
                       encoder_key: str | None = None) -> list[dict]:  # fmt: skip
    """Alignment-only warm-up of the adapter (no LLM pass): AdamW, constant learning rate.

    With `cache_dir`, the warmed-up adapter is stored in `<cache_dir>/align-warmup/<digest>.safetensors`,
    keyed by everything the result depends on: the adapter's initial weights, the LLM's input
    embeddings, the tokenized texts, the encoder, the clips' audio file stamps and the settings. A later
    run with the same key loads it (bit for bit what the steps would give) instead of taking them.

    Args:
        model: the SpeechLM (only `model.adapter` is updated).
        rows: speech rows (one per distinct clip is enough; duplicates are dropped).
        texts: the alignment text of each row.
        features: row -> the clip's tapped encoder features, (num_taps, frames, hidden).
        steps: optimiser steps.
        batch_size: clips per step.
        learning_rate: AdamW learning rate.
        seed: batch sampling.
        filler: see :class:`AlignmentTargets`.
        cache_dir: where warm-ups are stored and reused (None: always warm up).
        encoder_key: what fixes the encoder's features (the feature cache's fingerprint); None: a digest
            of the encoder's weights.

    Returns:
        The loss history, [{"step", "align_loss"}] every 10% of the steps.
    """
    from tqdm.auto import tqdm

    clips: dict[str, tuple[dict, str]] = {}
    for r, t in zip(rows, texts, strict=True):
        if t and r["clip_id"] not in clips:
            clips[r["clip_id"]] = (r, t)
    # In clip order, not row order: runs on other target sets of the same clips (labels, self-output,
    # verified or not) take the same steps, and so share one stored warm-up.
    pairs = [clips[c] for c in sorted(clips)]
    if not pairs or steps <= 0:
        return []
    stored = None
    if cache_dir:
        key = {
            "version": WARMUP_VERSION,
            "adapter": weights_digest(model.adapter),
            "embeddings": weights_digest(model.llm.get_input_embeddings()),
            "encoder": encoder_key or weights_digest(model.encoder),
            "clips": [
                [r["clip_id"], file_stamp(r["audio_path"]), model.tokenizer(t)["input_ids"]] for r, t in pairs
            ],
            "settings": [steps, batch_size, learning_rate, seed, filler],
        }
        stored = Path(cache_dir) / "align-warmup" / key_digest(key)
        if _load_warmup(model, stored):
            history = json.loads(stored.with_suffix(".json").read_text())["history"]
            logger.info("alignment warm-up: reused %s (%d steps on %d clips)", stored.with_suffix(".safetensors"),
                        steps, len(pairs))  # fmt: skip
            return history
    targets = AlignmentTargets(model.tokenizer, filler)
    feats = {r["clip_id"]: features(r) for r, _ in pairs}
    embeddings = model.llm.get_input_embeddings().weight
    params = [p for p in model.adapter.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    history = []
    every = max(1, math.ceil(steps / 10))
    was_training = model.training
    model.train()
    start = time.perf_counter()
    try:
        for step in tqdm(range(1, steps + 1), desc="align warm-up", unit="step"):
            batch = rng.sample(pairs, min(batch_size, len(pairs)))
            enc = pad_features([feats[r["clip_id"]] for r, _ in batch])
            embeds, mask = model.audio_embeddings(encoder_features=enc.features, encoder_mask=enc.mask)
            ids = targets([t for _, t in batch], mask.sum(1).tolist())
            loss = alignment_loss(embeds, mask, ids, embeddings, model.embed_mean_square)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % every == 0 or step == steps:
                history.append({"step": step, "align_loss": round(float(loss.detach()), 5)})
    finally:
        model.train(was_training)
    logger.info("alignment warm-up: %d steps on %d clips in %.0f s, loss %.4f -> %.4f", steps, len(pairs),
                time.perf_counter() - start, history[0]["align_loss"], history[-1]["align_loss"])  # fmt: skip
    if stored is not None:
        _store_warmup(model, stored, history)
    return history


def _load_warmup(model, stored: Path) -> bool:
    """Load a stored warm-up into `model.adapter`; False when there is none."""
    from safetensors.torch import load_file

    weights, meta = stored.with_suffix(".safetensors"), stored.with_suffix(".json")
    if not (weights.is_file() and meta.is_file()):
        return False
    model.adapter.load_state_dict(load_file(str(weights)), strict=True)
    return True


def _store_warmup(model, stored: Path, history: list[dict]) -> None:
    """Write the adapter (safetensors) and the loss history; atomic, so a killed run leaves no half file."""
    from safetensors.torch import save_file

    stored.parent.mkdir(parents=True, exist_ok=True)
    tmp = f".tmp{os.getpid()}"
    state = {k: v.detach().contiguous().clone() for k, v in model.adapter.state_dict().items()}
    save_file(state, str(stored) + tmp + ".safetensors")
    Path(str(stored) + tmp + ".json").write_text(json.dumps({"history": history}))
    os.replace(str(stored) + tmp + ".safetensors", stored.with_suffix(".safetensors"))
    os.replace(str(stored) + tmp + ".json", stored.with_suffix(".json"))
