"""Augmentations of training clips: telephone band, additive noise at a chosen SNR, room reverberation.

Real speech reaches a model through telephones, rooms and noise; a synthesizer's clean 16 kHz output
does not. The demo corpus applies these to a seeded share of its training clips, never to held-out ones
(`data.augment`), and records what was done to each clip in its `augment` column. Each augmentation
keeps the clip's active speech level (the `volume` attribute's measure), so the volume label stays true.

Reverberation uses `pyroomacoustics`' shoebox room simulator (image source method), a real room
acoustics package, not a hand-made impulse response.
"""

from __future__ import annotations

import json
import random

import numpy as np
import soxr

from speechllm.config import ConfigError
from speechllm.describe.features import Clip, active_mask, frame_rms

KINDS = ("telephone", "noise", "reverb")


def check_augment(cfg: dict | None) -> dict:
    """The `data.augment` settings, checked: `share` of training clips in [0, 1], known `kinds` with their
    ranges. Raises ConfigError naming the key."""
    cfg = dict(cfg or {})
    share = cfg.get("share", 0.0)
    if not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"data.augment.share={share!r} must be in [0, 1]")
    kinds = dict(cfg.get("kinds") or {})
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"data.augment.kinds: {unknown} unknown; known: {list(KINDS)}")
    if share and not kinds:
        raise ConfigError("data.augment.share > 0 needs at least one of data.augment.kinds")
    for kind, key in (("noise", "snr_db"), ("reverb", "rt60")):
        if kind in kinds:
            low, high = (kinds[kind] or {}).get(key, [None, None])
            if low is None or high is None or not 0 < low <= high:
                raise ConfigError(
                    f"data.augment.kinds.{kind}.{key}={[low, high]} must be [low, high] with 0 < low <= high"
                )
    return {"share": float(share), "kinds": kinds}


def plan_augmentation(plan: list[dict], cfg: dict, seed: int) -> None:
    """Draw, per training clip, whether it is augmented and how; sets each row's `augment` (a JSON
    string, "" for none). Its own RNG: the corpus plan's other draws do not change with it."""
    cfg = check_augment(cfg)
    rng = random.Random(f"augment/{seed}")
    kinds = sorted(cfg["kinds"])
    for row in plan:
        row["augment"] = ""
        if row["split"] != "train" or not kinds or rng.random() >= cfg["share"]:
            continue
        kind = rng.choice(kinds)
        settings = cfg["kinds"][kind] or {}
        step: dict = {"kind": kind, "seed": rng.randrange(2**31)}
        if kind == "noise":
            step["snr_db"] = round(rng.uniform(*settings["snr_db"]), 1)
        elif kind == "reverb":
            step["rt60"] = round(rng.uniform(*settings["rt60"]), 2)
        row["augment"] = json.dumps(step, sort_keys=True)


def _active_level(audio: np.ndarray, sr: int) -> float:
    clip = Clip("level", audio, sr)
    rms = frame_rms(clip)[active_mask(clip)].astype(np.float64)
    return float(np.mean(rms**2)) if rms.size else float(np.mean(audio.astype(np.float64) ** 2))


def telephone(audio: np.ndarray, sr: int) -> np.ndarray:
    """Through an 8 kHz telephone line: down to 8 kHz and back (nothing above 4 kHz survives), then the
    300-3400 Hz voice band."""
    narrow = soxr.resample(soxr.resample(audio, sr, 8000), 8000, sr)[: len(audio)]
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(len(narrow), 1 / sr)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    return np.fft.irfft(spectrum, n=len(narrow))


def add_noise(audio: np.ndarray, sr: int, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at `snr_db` below the active speech level."""
    noise = rng.standard_normal(len(audio))
    noise *= np.sqrt(_active_level(audio, sr) / 10 ** (snr_db / 10))
    return audio + noise


def reverberate(audio: np.ndarray, sr: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """The clip played in a simulated shoebox room of reverberation time `rt60` seconds (random size,
    source and microphone positions), truncated to its length."""
    import pyroomacoustics as pra

    dims = rng.uniform([3.0, 3.0, 2.4], [8.0, 6.0, 3.2])
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=sr, materials=pra.Material(absorption), max_order=min(max_order, 20))
    margin = 0.5
    room.add_source(rng.uniform(margin, dims - margin), signal=audio)
    room.add_microphone(rng.uniform(margin, dims - margin))
    room.simulate()
    return room.mic_array.signals[0][: len(audio)]


def augmented(audio: np.ndarray, sr: int, step: dict, peak_max: float) -> np.ndarray:
    """`audio` augmented as `step` (a row's `augment`) says, at its former active speech level, peaks
    kept under `peak_max`."""
    rng = np.random.default_rng(step["seed"])
    audio = audio.astype(np.float64)
    level = _active_level(audio, sr)
    if step["kind"] == "telephone":
        out = telephone(audio, sr)
    elif step["kind"] == "noise":
        out = add_noise(audio, sr, step["snr_db"], rng)
    elif step["kind"] == "reverb":
        out = reverberate(audio, sr, step["rt60"], rng)
    else:
        raise ValueError(f"unknown augmentation {step['kind']!r}")
    out *= np.sqrt(level / max(_active_level(out, sr), 1e-20))
    peak = float(np.max(np.abs(out))) or 1.0
    return (out * min(1.0, peak_max / peak)).astype(np.float32)
