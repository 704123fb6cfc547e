"""Reading audio for every stage: one loader, one set of checks, conversions recorded.

Audio is read with soundfile (never `datasets`' Audio feature, which needs torchcodec), converted to
float32 mono at 16 kHz, and checked. Problems a dataset really has (a missing file, a corrupt header,
an empty or all-zero file, NaN samples, a clip longer than the model takes) raise `AudioError` with
the path and a short reason, so a stage can write the clip to its rejects file and go on. Formats that
are merely different (stereo, 8 kHz, 24-bit) are converted, and each conversion is recorded so that the
described dataset says what was done to every clip.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000

# A clip whose loudest sample is below this is treated as silent: -80 dBFS is under the noise floor of
# any real recording (16-bit dither is about -96 dBFS), so only digital silence or near-zero files land here.
SILENCE_PEAK_DBFS = -80.0
# Shorter clips hold no syllable to describe: pitch, rate and ASR on them are noise.
MIN_SECONDS = 0.1
# Samples at or past this magnitude count as clipped; a clip with more than CLIPPED_NOTE_FRACTION of
# them is kept (clipped speech is still speech) but the clipping is recorded with its conversions.
FULL_SCALE = 0.999
CLIPPED_NOTE_FRACTION = 0.001

# Subtypes that decode to float32 without loss of meaning; anything else (PCM_24, PCM_U8, ULAW, ...)
# is recorded as a conversion.
_PLAIN_SUBTYPES = {"PCM_16", "FLOAT"}


class AudioError(ValueError):
    """An audio input that cannot be used.

    Attributes:
        path: the file (or the name given for an in-memory array).
        reason: a short reason, e.g. "missing file", "empty", "silent", "non-finite samples",
            "too long: 45.0 s > 30.0 s", "unreadable: <soundfile's message>".
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class AudioClip:
    """Decoded audio.

    Attributes:
        array: float32 mono samples. Shapes: (num_samples,).
        sr: sample rate of `array`.
        conversions: what was done to the file to get here, e.g. ["resampled 8000->16000",
            "downmixed 2->1 channels", "converted PCM_24->float32"], and clipping found; empty when nothing
            was needed or found.
    """

    array: np.ndarray
    sr: int
    conversions: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.array) / self.sr


def check_array(
    array: np.ndarray, sr: int, name: str = "<array>", max_seconds: float | None = None
) -> np.ndarray:
    """Check in-memory mono audio the way `load_audio` checks files.

    Args:
        array: samples. Shapes: (num_samples,).
        sr: sample rate.
        name: what to call the audio in error messages.
        max_seconds: refuse longer audio (None: no limit).

    Returns:
        The array as contiguous float32.

    Raises:
        AudioError: empty, shorter than 0.1 s, non-finite (NaN/inf) samples, all silent (a constant
            DC offset included), or longer than `max_seconds`.
    """
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 1:
        raise AudioError(name, f"expected mono audio of shape (num_samples,), got shape {array.shape}")
    if array.size == 0:
        raise AudioError(name, "empty (no samples)")
    seconds = array.size / sr
    if seconds < MIN_SECONDS:
        raise AudioError(name, f"too short: {seconds:.3f} s < {MIN_SECONDS:g} s")
    if not np.isfinite(array).all():
        raise AudioError(name, "non-finite samples (NaN or inf)")
    # Around the mean: a biased converter's constant offset is silence too.
    peak = float(np.max(np.abs(array - array.mean(dtype=np.float64))))
    if peak <= 10 ** (SILENCE_PEAK_DBFS / 20):
        peak_db = "-inf" if peak == 0 else f"{20 * math.log10(peak):.1f}"
        raise AudioError(name, f"silent (peak {peak_db} dBFS around the mean)")
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(name, f"too long: {seconds:.1f} s > {max_seconds:g} s")
    return array


def clipping_note(array: np.ndarray) -> str | None:
    """A note for audio with more than 0.1% of its samples at or past full scale, else None.

    Args:
        array: float samples (full scale is 1.0). Shapes: (num_samples,).
    """
    clipped = float(np.mean(np.abs(array) >= FULL_SCALE))
    if clipped <= CLIPPED_NOTE_FRACTION:
        return None
    peak_db = 20 * math.log10(float(np.max(np.abs(array))))
    return f"clipped: {100 * clipped:.1f}% of samples at full scale (peak {peak_db:+.1f} dBFS)"


def file_stamp(path: str | os.PathLike) -> str:
    """`size:mtime_ns` of a file, or "missing": it changes when the file is replaced or edited in place,
    so caches keyed by a path can tell new audio from old without reading it."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def resample(array: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample mono audio with soxr (high quality).

    Args:
        array: float32 samples. Shapes: (num_samples,).
        sr_in: input rate.
        sr_out: output rate.

    Returns:
        float32 samples at `sr_out`. Shapes: (round(num_samples * sr_out / sr_in),).
    """
    if sr_in == sr_out:
        return array
    return soxr.resample(array, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def write_audio(path: str | os.PathLike, array: np.ndarray, sr: int, subtype: str) -> None:
    """`soundfile.write`, with a failure named by its file: on a full disk libsndfile says only "System
    error.", so that becomes `OSError(ENOSPC)` with the path, and a partial file is removed.

    Raises:
        OSError: the file could not be written (ENOSPC when the disk has under 1 MiB free, else EIO).
    """
    try:
        sf.write(path, array, sr, subtype=subtype)
    except sf.LibsndfileError as err:
        with_path = os.fspath(path)
        if os.path.exists(with_path):
            os.unlink(with_path)
        full = shutil.disk_usage(os.path.dirname(os.path.abspath(with_path))).free < 1 << 20
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code) if full else f"libsndfile: {err}", with_path) from err


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> AudioClip:
    """Read an audio file as float32 mono at `sr`, recording every conversion.

    The length check uses the header before decoding, so a long file is refused without reading it.

    Args:
        path: an audio file soundfile can read (wav, flac, ogg, ...).
        sr: target sample rate.
        max_seconds: refuse longer clips (None: no limit). Clips are never silently cut.

    Returns:
        An `AudioClip` with `array` of shape (num_samples,) at `sr`.

    Raises:
        AudioError: missing file, not a regular file, unreadable/corrupt/not audio, empty or under 0.1 s, all silent,
            NaN/inf samples, or longer than `max_seconds`. Clipping is not refused; it is recorded.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(path, "missing file")
    if os.path.isdir(path):
        raise AudioError(path, "not a file (a directory)")
    if not os.path.isfile(path):  # opening a FIFO would wait for a writer forever
        raise AudioError(path, "not a regular file (a FIFO, socket or device)")
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/TypeError by format
        raise AudioError(path, f"unreadable: {_short(err)}") from err
    if info.frames == 0:
        raise AudioError(path, "empty (no samples)")
    if max_seconds is not None and info.frames / info.samplerate > max_seconds:
        raise AudioError(path, f"too long: {info.frames / info.samplerate:.1f} s > {max_seconds:g} s")
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # a header that promises more frames than the file holds, etc.
        raise AudioError(path, f"unreadable: {_short(err)}") from err
    if data.shape[0] == 0:
        raise AudioError(path, "empty (no samples)")

    conversions: list[str] = []
    if info.subtype not in _PLAIN_SUBTYPES:
        conversions.append(f"converted {info.subtype}->float32")
    if data.shape[1] > 1:
        conversions.append(f"downmixed {data.shape[1]}->1 channels")
        array = data.mean(axis=1)
    else:
        array = data[:, 0]
    # Check before resampling: NaNs would spread through the filter and silence would be resampled for nothing.
    array = check_array(array, file_sr, name=path)
    if note := clipping_note(array):
        conversions.append(note)
    if file_sr != sr:
        array = resample(array, file_sr, sr)
        conversions.append(f"resampled {file_sr}->{sr}")
    return AudioClip(array=np.ascontiguousarray(array, dtype=np.float32), sr=sr, conversions=conversions)


def _short(err: Exception) -> str:
    """One line of an exception's message, without soundfile's repeated path."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]
