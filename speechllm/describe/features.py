"""Signal features shared by several attributes, computed once per clip and cached on it.

Pitch, gender (pitch-based estimate), volume, speaking rate and SNR all need frame energies and most
need the speech-active frames; pitch and gender both need the F0 track. `Clip.cache` holds them so a
clip is framed and pitch-tracked once however many attributes ask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import librosa
import numpy as np

# 32 ms frames with a 16 ms hop at 16 kHz: short enough to find pauses between words.
FRAME = 512
HOP = 256
# A frame is speech-active when its RMS is within this many dB of the clip's loudest frame. 35 dB keeps
# quiet consonants and drops pauses and the silence around the speech.
ACTIVE_DB = 35.0


@dataclass
class Clip:
    """One clip being described.

    Attributes:
        clip_id: the row's id.
        audio: float32 mono samples. Shapes: (num_samples,).
        sr: sample rate of `audio`.
        labels: gold labels by plain name (`gender`, `text`, ...), from the input's `label_<name>` columns.
        values: attribute outputs so far (column name -> value), filled by the extractors.
        cache: shared signal features (see the functions of this module).
    """

    clip_id: str
    audio: np.ndarray
    sr: int
    labels: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.audio) / self.sr


def frame_rms(clip: Clip) -> np.ndarray:
    """Per-frame RMS.

    Returns:
        float32 RMS of each frame. Shapes: (num_frames,).
    """
    if "rms" not in clip.cache:
        # center=False: frames never read padding, so a clip's edges do not look quieter than they are.
        audio = clip.audio if len(clip.audio) >= FRAME else np.pad(clip.audio, (0, FRAME - len(clip.audio)))
        clip.cache["rms"] = librosa.feature.rms(y=audio, frame_length=FRAME, hop_length=HOP, center=False)[0]
    return clip.cache["rms"]


def active_mask(clip: Clip) -> np.ndarray:
    """Speech-active frames: RMS within `ACTIVE_DB` of the loudest frame.

    Returns:
        bool mask. Shapes: (num_frames,).
    """
    if "active" not in clip.cache:
        rms = frame_rms(clip)
        clip.cache["active"] = rms > rms.max() * 10 ** (-ACTIVE_DB / 20)
    return clip.cache["active"]


def active_seconds(clip: Clip) -> float:
    """Seconds of speech-active audio (pauses and surrounding silence left out)."""
    return float(active_mask(clip).sum()) * HOP / clip.sr


def f0_track(clip: Clip, fmin: float, fmax: float) -> np.ndarray:
    """F0 (Hz) of the speech-active frames, by YIN.

    YIN is used rather than pYIN: pYIN's HMM decoding is ~30x slower and the median over active frames
    needs no voicing probabilities; unvoiced frames inside the active region (fricatives) give scattered
    estimates that the median ignores.

    Args:
        clip: the clip.
        fmin: lowest F0 searched.
        fmax: highest F0 searched.

    Returns:
        F0 per active frame. Shapes: (num_active_frames,).
    """
    key = ("f0", fmin, fmax)
    if key not in clip.cache:
        frame_length = 1024  # YIN needs two periods of fmin in a frame: 2 * 16000 / 60 Hz < 1024
        audio = clip.audio
        if len(audio) < frame_length:
            audio = np.pad(audio, (0, frame_length - len(audio)))
        f0 = librosa.yin(
            audio, fmin=fmin, fmax=fmax, sr=clip.sr, frame_length=frame_length, hop_length=HOP, center=False
        )
        # Align YIN's (longer) frames with the RMS frames by their start sample.
        active = active_mask(clip)
        n = min(len(f0), len(active))
        clip.cache[key] = f0[:n][active[:n]]
    return clip.cache[key]


# Voicing: a frame is periodic when YIN's cumulative mean normalised difference dips below
# VOICED_APERIODICITY at a period inside VOICING_FMIN..VOICING_FMAX. Gender, pitch and speaking rate need
# voiced speech: a clip with under MIN_VOICED_SHARE of its active frames voiced gets none of them rather
# than invented ones. Measured (2 s each): white noise and a 50 Hz hum, pure or with harmonics, 0.00
# voiced; an espeak voice at 67 Hz 0.34; the 680 espeak demo clips 0.39 at least (low male voices are the
# least periodic), median above 0.7.
VOICED_APERIODICITY = 0.45
MIN_VOICED_SHARE = 0.1
VOICING_FMIN, VOICING_FMAX = 60.0, 500.0


def voiced_share(clip: Clip, fmin: float = VOICING_FMIN, fmax: float = VOICING_FMAX) -> float:
    """Share of the speech-active frames that are periodic with a period between 1/fmax and 1/fmin.

    YIN's difference function d(t) = sum_j (x_j - x_{j+t})^2 over a window, from FFT cross-correlation,
    normalised by its running mean (de Cheveigne & Kawahara 2002); its minimum over the F0 range is the
    frame's aperiodicity.

    Returns:
        A share in [0, 1]; 0 for a clip with no active frames.
    """
    key = ("voiced", fmin, fmax)
    if key not in clip.cache:
        frame_length = 1024
        audio = clip.audio
        if len(audio) < frame_length:
            audio = np.pad(audio, (0, frame_length - len(audio)))
        frames = librosa.util.frame(audio, frame_length=frame_length, hop_length=HOP)
        active = active_mask(clip)
        n = min(frames.shape[1], len(active))
        x = frames[:, :n][:, active[:n]].T.astype(np.float64)  # (active frames, frame_length)
        if len(x) == 0:
            clip.cache[key] = 0.0
            return 0.0
        min_period = max(1, int(clip.sr / fmax))
        max_period = min(int(np.ceil(clip.sr / fmin)), frame_length // 2)
        window = frame_length - max_period
        nfft = 2 * frame_length
        # r[t] = sum_{j < window} x_j x_{j+t}
        r = np.fft.irfft(np.conj(np.fft.rfft(x[:, :window], nfft)) * np.fft.rfft(x, nfft), nfft)
        r = r[:, : max_period + 1]
        energy = np.cumsum(np.pad(x**2, ((0, 0), (1, 0))), axis=1)  # energy[:, k] = sum_{j < k} x_j^2
        lags = np.arange(max_period + 1)
        d = energy[:, [window]] + (energy[:, lags + window] - energy[:, lags]) - 2 * r
        d = np.maximum(d[:, 1:], 0.0)
        cmnd = d * lags[1:] / np.maximum(np.cumsum(d, axis=1), 1e-12)
        in_range = cmnd[:, min_period - 1 :]
        # A dip at the range's longest period is the slope of a slower cycle (a mains hum), not a period.
        interior = in_range.argmin(axis=1) < in_range.shape[1] - 1
        clip.cache[key] = float(np.mean((in_range.min(axis=1) < VOICED_APERIODICITY) & interior))
    return clip.cache[key]


def has_voiced_speech(clip: Clip) -> bool:
    """Whether enough of the clip is voiced for gender, pitch and speaking rate to mean anything."""
    return voiced_share(clip) >= MIN_VOICED_SHARE


def median_f0(clip: Clip, fmin: float, fmax: float) -> float:
    """Median F0 over speech-active frames, or NaN when there are none."""
    f0 = f0_track(clip, fmin, fmax)
    return float(np.median(f0)) if len(f0) else float("nan")


def to_bin(value: float, edges: list[float], words: list[str]) -> str:
    """The word of the bin that `value` falls in.

    Args:
        value: the measurement; NaN gives "".
        edges: ascending bin edges; a value equal to an edge goes to the upper bin.
        words: one word per bin: `len(words) == len(edges) + 1`.

    Returns:
        The bin's word, or "" for NaN.
    """
    if len(words) != len(edges) + 1:
        raise ValueError(f"need one word per bin: {len(edges)} edges give {len(edges) + 1} bins, got {words}")
    if value is None or np.isnan(value):
        return ""
    return words[int(np.searchsorted(np.asarray(edges, dtype=float), value, side="right"))]
