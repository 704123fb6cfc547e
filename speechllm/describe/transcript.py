"""The transcript attribute: batched Whisper ASR from a model source, or the data's text label."""

from __future__ import annotations

import functools

import numpy as np
import torch

from speechllm.describe.features import Clip
from speechllm.describe.registry import register_attribute

# Whisper's feature extractor pads or cuts every input to 30 s; longer audio must be refused, not cut.
WHISPER_MAX_SECONDS = 30.0


@functools.lru_cache(maxsize=2)
def _load(source: str):
    from speechllm.sources import load_whisper

    model, processor = load_whisper(source)
    return model.eval(), processor


def transcribe(
    arrays: list[np.ndarray], source: str, batch_size: int = 16, max_new_tokens: int = 128, sr: int = 16000
) -> list[str]:
    """Transcribe clips with Whisper, `batch_size` at a time.

    Whisper pads every input to 30 s, so a batch costs about what one clip costs on the encoder side:
    batching is where ASR throughput comes from.

    Args:
        arrays: mono float32 clips at `sr`, each at most 30 s. Shapes: each (num_samples,).
        source: a Whisper model source (`packaged:whisper-tiny.en`, hub id, local path).
        batch_size: clips per `generate` call.
        max_new_tokens: token limit per transcript.
        sr: sample rate of `arrays`.

    Returns:
        One stripped transcript per clip.

    Raises:
        ValueError: a clip longer than 30 s (Whisper would silently cut it).
    """
    for i, a in enumerate(arrays):
        if len(a) / sr > WHISPER_MAX_SECONDS:
            raise ValueError(
                f"clip {i} is {len(a) / sr:.1f} s; Whisper takes at most {WHISPER_MAX_SECONDS:g} s"
            )
    model, processor = _load(source)
    texts: list[str] = []
    for start in range(0, len(arrays), batch_size):
        batch = [np.asarray(a, dtype=np.float32) for a in arrays[start : start + batch_size]]
        features = processor(batch, sampling_rate=sr, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(features.to(model.dtype), max_new_tokens=max_new_tokens)
        texts.extend(t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True))
    return texts


@register_attribute("transcript")
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
                [clips[i].audio for i in todo], cfg["source"], cfg["batch_size"], cfg["max_new_tokens"]
            )
            for i, text in zip(todo, heard, strict=True):
                texts[i] = text
        else:
            raise ValueError(f"transcript: unknown method {method!r} in methods {cfg['methods']}")
    return [{"transcript": t} for t in texts]
