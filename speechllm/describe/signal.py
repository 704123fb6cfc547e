"""Attributes measured from the signal: duration, pitch, volume, speaking rate, SNR."""

from __future__ import annotations

import math
import re

import numpy as np

from speechllm.describe.features import (
    Clip,
    active_mask,
    active_seconds,
    frame_rms,
    has_voiced_speech,
    median_f0,
    to_bin,
)
from speechllm.describe.registry import register_attribute


@register_attribute("duration", keys=())
def duration(clips: list[Clip], cfg: dict) -> list[dict]:
    """Clip length in seconds (`duration`, float)."""
    return [{"duration": round(clip.duration, 3)} for clip in clips]


@register_attribute("pitch", keys=("bins", "fmin", "fmax", "relative_to"))
def pitch(clips: list[Clip], cfg: dict) -> list[dict]:
    """Median F0 over speech-active frames (`pitch_hz`) and its bin (`pitch`).

    With `relative_to: gender` in the config, the bins are per gender word (`bins.male`, `bins.female`):
    "high" for a man is a different frequency than for a woman, and a listener (or a label) means the
    relative one. Clips whose gender is unknown use `bins.default`.
    """
    relative_to = cfg.get("relative_to")
    out = []
    for clip in clips:
        # Noise, hum or a click has no pitch: YIN would still report one.
        hz = median_f0(clip, cfg["fmin"], cfg["fmax"]) if has_voiced_speech(clip) else float("nan")
        group = clip.values.get(relative_to, "") if relative_to else ""
        edges = cfg["bins"].get(group) or cfg["bins"]["default"]
        out.append({"pitch": to_bin(hz, edges, cfg["words"]), "pitch_hz": round(hz, 1)})
    return out


@register_attribute("volume", keys=("edges",))
def volume(clips: list[Clip], cfg: dict) -> list[dict]:
    """Active speech level in dBFS: RMS over speech-active frames (`volume_dbfs`), and its bin (`volume`).

    Pauses are left out so that a slow speaker with long pauses does not read as quiet.
    """
    out = []
    for clip in clips:
        rms = frame_rms(clip)[active_mask(clip)]
        dbfs = 10 * math.log10(float(np.mean(rms.astype(np.float64) ** 2)) + 1e-12)
        out.append({"volume": to_bin(dbfs, cfg["edges"], cfg["words"]), "volume_dbfs": round(dbfs, 1)})
    return out


_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


def count_syllables(text: str) -> int:
    """Syllables in English text by vowel groups, with the silent final "e" and "-ed" rules.

    Good to about 10% on ordinary sentences, which is all a slow/normal/fast bin needs, and needs no
    pronunciation dictionary. Digits are counted as one syllable per digit.

    Args:
        text: any text.

    Returns:
        The syllable count (at least one per word).
    """
    total = 0
    for word in re.findall(r"[a-z']+|\d", text.lower()):
        if word.isdigit():
            total += 1
            continue
        word = word.replace("'", "")
        groups = len(_VOWEL_GROUPS.findall(word))
        # "make", "time": a final e after a consonant is silent; "the", "be", "table" keep theirs.
        if word.endswith("e") and not word.endswith(("le", "ee", "ye")) and groups > 1:
            groups -= 1
        # "asked", "played": -ed is silent except after t or d ("wanted", "needed").
        elif word.endswith("ed") and len(word) > 3 and word[-3] not in "td" and groups > 1:
            groups -= 1
        total += max(groups, 1)
    return total


@register_attribute("speaking_rate", requires=("transcript",), keys=("edges",))
def speaking_rate(clips: list[Clip], cfg: dict) -> list[dict]:
    """Syllables per second of speech-active time (`speaking_rate_sps`) and its bin (`speaking_rate`).

    Syllables come from the transcript (ASR or label); time excludes pauses and surrounding silence,
    so the rate measures articulation speed rather than how much silence the recording has. A clip
    without voiced speech has no rate (Whisper may still write a few words for noise).
    """
    out = []
    for clip in clips:
        text = clip.values.get("transcript") or ""
        seconds = active_seconds(clip)
        if not text.strip() or seconds <= 0 or not has_voiced_speech(clip):
            out.append({"speaking_rate": "", "speaking_rate_sps": float("nan")})
            continue
        sps = count_syllables(text) / seconds
        out.append(
            {"speaking_rate": to_bin(sps, cfg["edges"], cfg["words"]), "speaking_rate_sps": round(sps, 2)}
        )
    return out


@register_attribute("snr", keys=("edges", "max_db", "noise_percentile"))
def snr(clips: list[Clip], cfg: dict) -> list[dict]:
    """Estimated signal-to-noise ratio in dB (`snr_db`) and its bin (`snr`).

    Noise power is the mean of the quietest frames (`noise_percentile` of frame powers; speech always
    has pauses and edges where only noise remains), signal power the mean over speech-active frames
    minus that noise. Digital silence would give an infinite ratio, so it is capped at `max_db`.
    """
    out = []
    for clip in clips:
        power = frame_rms(clip).astype(np.float64) ** 2
        noise = float(np.mean(power[power <= np.percentile(power, cfg["noise_percentile"])]))
        speech = float(np.mean(power[active_mask(clip)]))
        if noise <= 0:
            db = float(cfg["max_db"])
        else:
            db = 10 * math.log10(max(speech - noise, 1e-12) / noise)
            db = float(np.clip(db, -cfg["max_db"], cfg["max_db"]))
        out.append({"snr": to_bin(db, cfg["edges"], cfg["words"]), "snr_db": round(db, 1)})
    return out
