"""Flite voices for the demo corpus: other synthesizers' speakers beside espeak-ng's.

A model trained on one synthesizer can learn that synthesizer's variant knobs instead of voices. Flite's
voices are other speakers made another way (diphone `kal16`, statistical parametric `awb` and `slt`,
recorded from real people), so a share of the demo's training clips is spoken by them
(`data.other_voices`, planned in `speechllm.corpus.espeak`). Each voice decides its clips' gender and
accent; pitch and speed are set by flite's own features and calibrated to the espeak levels:
- pitch: `int_f0_target_mean`, found per voice by measuring a calibration sentence at a few targets and
  interpolating on log F0, as the espeak variants' `-p` is;
- speed: `duration_stretch`, the ratio of the calibration sentence's speech-active time spoken by espeak-ng
  at the level's words per minute to the flite voice's own at stretch 1, so "fast" means the same pace for
  every synthesizer.
Volume is set afterwards by the same recorded gain as every espeak clip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from speechllm.audio import load_audio
from speechllm.describe.features import Clip, active_seconds, median_f0

_CALIBRATION_HZ = (70, 100, 140, 200, 280)


class FliteError(RuntimeError):
    """flite is missing or failed; the message says which and how to fix it."""


def flite_voices() -> frozenset[str]:
    """The voices the installed flite lists (`flite -lv`)."""
    exe = _flite()
    out = subprocess.run([exe, "-lv"], capture_output=True, text=True, check=True).stdout
    return frozenset(out.split(":", 1)[-1].split())


def speak_flite(
    text: str,
    path: str | os.PathLike,
    voice: str,
    f0_mean: float | None = None,
    duration_stretch: float = 1.0,
) -> str:
    """Speak `text` into a wav file with flite (at the voice's own rate: 16 kHz for kal16, awb, slt).

    Args:
        text: what to say.
        path: output wav path (parent folders are created).
        voice: a flite voice (`flite -lv`), e.g. `kal16`, `awb`, `slt`.
        f0_mean: target mean F0 in Hz (`int_f0_target_mean`); None: the voice's own.
        duration_stretch: >1 slower, <1 faster.

    Returns:
        `path` as a string.

    Raises:
        FliteError: flite is not installed, lacks the voice, or failed.
    """
    exe = _flite()
    if voice not in flite_voices():
        raise FliteError(f"flite has no voice {voice!r}; installed: {sorted(flite_voices())}")
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-voice", voice, "--setf", f"duration_stretch={duration_stretch:.4f}", "-o", path]
    if f0_mean is not None:
        cmd += ["--setf", f"int_f0_target_mean={f0_mean:.2f}"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as script:
        # Text goes through a file, so text starting with "-" is never read as an option; no shell involved.
        script.write(text)
        script.flush()
        result = subprocess.run([*cmd, "-f", script.name], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not os.path.exists(path) or os.path.getsize(path) <= 44:
        raise FliteError(f"flite failed ({' '.join(cmd)}): {result.stderr.strip() or 'no audio written'}")
    return path


def calibrate_flite(
    voice: str, pitch_targets_hz: dict[str, float], speed_reference_s: dict[str, float], text: str
) -> dict[str, dict[str, float]]:
    """The flite settings that make `voice` speak at each pitch and speed level.

    Args:
        voice: a flite voice.
        pitch_targets_hz: level word -> target F0 in Hz (the voice's gender's `data.pitch_hz`).
        speed_reference_s: level word -> speech-active seconds of `text` spoken by espeak-ng at that level.
        text: the calibration sentence.

    Returns:
        {"f0_mean": level -> int_f0_target_mean, "duration_stretch": level -> stretch}.
    """
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for hz in _CALIBRATION_HZ:
            clip = load_audio(speak_flite(text, Path(tmp) / f"{hz}.wav", voice, f0_mean=hz))
            measured.append(median_f0(Clip("calibration", clip.array, clip.sr), 50, 600))
        native = load_audio(speak_flite(text, Path(tmp) / "native.wav", voice))
    log_f0 = np.log(np.maximum.accumulate(np.asarray(measured)))  # guard monotonicity for np.interp
    if log_f0[-1] - log_f0[0] < np.log(1.5):
        raise FliteError(f"flite voice {voice!r} does not follow int_f0_target_mean (F0 {[round(m, 1) for m in measured]} Hz): its pitch "
                         f"cannot be set; use kal16, awb or slt")  # fmt: skip
    log_targets = np.log(_CALIBRATION_HZ)
    native_s = active_seconds(Clip("calibration", native.array, native.sr))
    return {
        "f0_mean": {
            level: round(float(np.exp(np.interp(np.log(hz), log_f0, log_targets))), 1)
            for level, hz in pitch_targets_hz.items()
        },
        "duration_stretch": {level: round(s / native_s, 3) for level, s in speed_reference_s.items()},
    }


def _flite() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise FliteError("flite is not installed: `apt-get install flite` (or `make setup`)")
    return exe
