"""Speaker attributes: gender, emotion, accent, age.

Each comes, clip by clip, from the first method in its config's `methods` list that gives a value:
- `label`: the data's gold label column (`label_<label>` in the inputs);
- `model`: a pluggable HF audio-classification model (`model:` a hub id, local path or packaged source),
  its class names mapped through `label_map`;
- `pitch` (gender only): median F0 against a threshold.
A clip no method can answer gets "" and its description leaves the attribute out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from speechllm.describe.features import Clip, has_voiced_speech, median_f0
from speechllm.describe.registry import register_attribute
from speechllm.sources import resolve_source


def normalise_word(value, label_map: dict) -> str:
    """A label or class name as the attribute's word: lowercased, stripped, mapped through `label_map`."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    word = str(value).strip().lower()
    return str(label_map.get(word, word))


@functools.lru_cache(maxsize=4)
def load_classifier(source: str):
    """Load an audio-classification model and its feature extractor once per process.

    Args:
        source: hub id, local path, or packaged source.

    Returns:
        (model in eval mode, feature extractor).
    """
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    if source.startswith("packaged:"):
        source = resolve_source(source)
    model = AutoModelForAudioClassification.from_pretrained(source).eval()
    return model, AutoFeatureExtractor.from_pretrained(source)


def classify(arrays: list[np.ndarray], source: str, batch_size: int = 16, sr: int = 16000) -> list[str]:
    """Class names predicted by an audio-classification model.

    Args:
        arrays: mono float32 clips at `sr`. Shapes: each (num_samples,).
        source: the model source.
        batch_size: clips per forward pass.
        sr: sample rate (the feature extractor checks it against its own).

    Returns:
        The top class name (`config.id2label`) per clip.
    """
    model, extractor = load_classifier(source)
    names: list[str] = []
    for start in range(0, len(arrays), batch_size):
        batch = arrays[start : start + batch_size]
        inputs = extractor(
            batch, sampling_rate=sr, padding=True, return_tensors="pt", return_attention_mask=True
        )
        with torch.inference_mode():
            logits = model(**inputs).logits
        names.extend(model.config.id2label[int(i)] for i in logits.argmax(-1))
    return names


# The YAML keys `speaker_attribute` reads.
SPEAKER_KEYS = ("methods", "label", "model", "batch_size", "label_map")


def speaker_attribute(
    name: str, clips: list[Clip], cfg: dict, methods: dict[str, Callable[[Clip, dict], str]] | None = None
) -> list[dict]:
    """Fill attribute `name` for each clip from the first of `cfg["methods"]` that has a value.

    Args:
        name: the attribute (also its output column).
        clips: the batch.
        cfg: the attribute's config (`methods`, `label`, `model`, `label_map`, ...).
        methods: the attribute's own methods beside `label` and `model`: name -> (clip, cfg) -> word
            ("" for none), e.g. gender's `pitch`.

    Returns:
        `{name: word}` per clip ("" where no method gives one).
    """
    label_map = {str(k).lower(): v for k, v in (cfg.get("label_map") or {}).items()}
    words = [""] * len(clips)
    for method in cfg["methods"]:
        todo = [i for i, w in enumerate(words) if not w]
        if not todo:
            break
        if method == "label":
            for i in todo:
                words[i] = normalise_word(clips[i].labels.get(cfg.get("label", name)), label_map)
        elif method == "model":
            if not cfg.get("model"):
                continue  # no classifier configured: fall through to the next method
            predicted = classify([clips[i].audio for i in todo], cfg["model"], cfg.get("batch_size", 16))
            for i, p in zip(todo, predicted, strict=True):
                words[i] = normalise_word(p, label_map)
        elif method in (methods or {}):
            for i in todo:
                words[i] = methods[method](clips[i], cfg)
        else:
            raise ValueError(f"attribute {name!r}: unknown method {method!r} in methods {cfg['methods']}")
    return [{name: w} for w in words]


@register_attribute("gender", keys=(*SPEAKER_KEYS, "fmin", "fmax", "pitch_threshold_hz"))
def gender(clips: list[Clip], cfg: dict) -> list[dict]:
    """Speaker gender: label, classifier, or pitch-based estimate (`gender`: female|male)."""
    return speaker_attribute("gender", clips, cfg, methods={"pitch": gender_from_pitch})


def gender_from_pitch(clip: Clip, cfg: dict) -> str:
    """`female` when the median F0 is at or above `pitch_threshold_hz`, else `male` ("" without voiced speech)."""
    if not has_voiced_speech(clip):
        return ""  # noise or hum: no voice to judge
    hz = median_f0(clip, cfg["fmin"], cfg["fmax"])
    return "" if np.isnan(hz) else "female" if hz >= cfg["pitch_threshold_hz"] else "male"


@register_attribute("emotion", keys=SPEAKER_KEYS)
def emotion(clips: list[Clip], cfg: dict) -> list[dict]:
    """Emotion: label or classifier (`emotion`)."""
    return speaker_attribute("emotion", clips, cfg)


@register_attribute("accent", keys=SPEAKER_KEYS)
def accent(clips: list[Clip], cfg: dict) -> list[dict]:
    """Accent: label or classifier (`accent`)."""
    return speaker_attribute("accent", clips, cfg)


@register_attribute("age", keys=SPEAKER_KEYS)
def age(clips: list[Clip], cfg: dict) -> list[dict]:
    """Age group: label or classifier (`age`)."""
    return speaker_attribute("age", clips, cfg)
