"""The transcript attribute: batched Whisper ASR from a model source, or the data's text label."""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from speechllm.describe.features import Clip
from speechllm.describe.registry import register_attribute
from speechllm.sources import load_whisper

logger = logging.getLogger(__name__)

# Whisper's feature extractor pads or cuts every input to 30 s; longer audio must be refused, not cut.
WHISPER_MAX_SECONDS = 30.0


@functools.lru_cache(maxsize=2)
def _load(source: str):
    model, processor = load_whisper(source)
    return model.eval(), processor


def transcribe(
    arrays: list[np.ndarray],
    source: str,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    sr: int = 16000,
    trim: bool = True,
    trim_margin_seconds: float = 5.0,
) -> list[str]:
    """Transcribe clips with Whisper, `batch_size` at a time.

    Whisper's feature extractor pads every input to 30 s, so a 3-s clip costs the encoder ten times
    what it needs. With `trim`, clips are sorted by length, and each batch's log-mel features are cut
    to its longest clip plus `trim_margin_seconds` of the padding and encoded with the positional
    embedding sliced to match, the way ultravox runs Whisper; the decoder then cross-attends to the
    short encoding. The margin matters: Whisper learned to end a transcript where it sees silence, and
    tiny.en given 0.5 s after the speech often repeats the sentence until the token limit, while 5 s
    (measured on the demo corpus) transcribes as well as the full 30 s. A clip whose trimmed transcript
    still reaches `max_new_tokens` is transcribed again on the full 30 s.

    Args:
        arrays: mono float32 clips at `sr`, each at most 30 s. Shapes: each (num_samples,).
        source: a Whisper model source (`packaged:whisper-tiny.en`, hub id, local path).
        batch_size: clips per `generate` call.
        max_new_tokens: token limit per transcript.
        sr: sample rate of `arrays`.
        trim: encode only each batch's audio length (plus the margin) instead of 30 s.
        trim_margin_seconds: silence kept after each batch's longest clip when trimming.

    Returns:
        One stripped transcript per clip, in input order.

    Raises:
        ValueError: a clip longer than 30 s (Whisper would silently cut it).
    """
    for i, a in enumerate(arrays):
        if len(a) / sr > WHISPER_MAX_SECONDS:
            raise ValueError(
                f"clip {i} is {len(a) / sr:.1f} s; Whisper takes at most {WHISPER_MAX_SECONDS:g} s"
            )
    model, processor = _load(source)
    # Longest first: batches hold clips of similar length, so trimming cuts the most.
    order = sorted(range(len(arrays)), key=lambda i: -len(arrays[i])) if trim else list(range(len(arrays)))
    texts: list[str] = [""] * len(arrays)
    hop = processor.feature_extractor.hop_length
    margin_frames = int(trim_margin_seconds * sr) // hop
    unfinished: list[int] = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [np.asarray(arrays[i], dtype=np.float32) for i in idx]
        features = processor(batch, sampling_rate=sr, return_tensors="pt").input_features.to(model.dtype)
        with torch.inference_mode():
            if trim:
                frames = max(len(a) for a in batch) // hop + margin_frames
                frames = min(features.shape[-1], frames + frames % 2)  # conv2 has stride 2
                encoded = _encode_trimmed(model, features[..., :frames])
                ids = model.generate(encoder_outputs=encoded, max_new_tokens=max_new_tokens)
            else:
                ids = model.generate(features, max_new_tokens=max_new_tokens)
        if trim:
            ended = (ids == model.generation_config.eos_token_id).any(dim=1).tolist()
            unfinished += [i for i, done in zip(idx, ended, strict=True) if not done]
        for i, text in zip(idx, processor.batch_decode(ids, skip_special_tokens=True), strict=True):
            texts[i] = text.strip()
    if unfinished:
        logger.info("transcript: %d clip(s) ran to the token limit trimmed; redone on 30 s", len(unfinished))
        redone = transcribe(
            [arrays[i] for i in unfinished], source, batch_size, max_new_tokens, sr, trim=False
        )
        for i, text in zip(unfinished, redone, strict=True):
            texts[i] = text
    return texts


def _encode_trimmed(model, features: torch.Tensor):
    """Whisper's encoder on fewer than 3000 mel frames.

    Shapes:
        features: (batch, num_mel_bins, frames), frames even and <= 3000 -> last_hidden_state
        (batch, frames // 2, d_model).
    """
    from transformers.modeling_outputs import BaseModelOutput

    enc = model.get_encoder()
    x = torch.nn.functional.gelu(enc.conv1(features))
    x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
    x = x + enc.embed_positions.weight[: x.shape[1]]
    for layer in enc.layers:
        x = layer(x, None)
    return BaseModelOutput(last_hidden_state=enc.layer_norm(x))


@register_attribute(
    "transcript",
    keys=("methods", "label", "source", "batch_size", "max_new_tokens", "trim", "trim_margin_seconds"),
)
def transcript(clips: list[Clip], cfg: dict) -> list[dict]:
    """What is said (`transcript`), from the first of `methods` that gives it: `label` or `asr`."""
    texts = [""] * len(clips)
    for method in cfg["methods"]:
        todo = [i for i, t in enumerate(texts) if not t]
        if not todo:
            break
        if method == "label":
            for i in todo:
                value = clips[i].labels.get(cfg.get("label", "text"))
                texts[i] = str(value).strip() if value is not None else ""
        elif method == "asr":
            heard = transcribe(
                [clips[i].audio for i in todo],
                cfg["source"],
                cfg["batch_size"],
                cfg["max_new_tokens"],
                trim=cfg["trim"],
                trim_margin_seconds=cfg["trim_margin_seconds"],
            )
            for i, text in zip(todo, heard, strict=True):
                texts[i] = text
        else:
            raise ValueError(f"transcript: unknown method {method!r} in methods {cfg['methods']}")
    return [{"transcript": t} for t in texts]
