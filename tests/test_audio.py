"""speechllm.audio: bad files are refused with a reason, odd formats are converted and recorded."""

import os

import numpy as np
import pytest
import soundfile as sf

from speechllm.audio import SAMPLE_RATE, AudioError, check_array, load_audio


def _tone(seconds=1.0, sr=SAMPLE_RATE, hz=220.0, amp=0.3):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_plain_16k_wav_needs_no_conversion(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(), SAMPLE_RATE, subtype="PCM_16")
    clip = load_audio(path)
    assert clip.sr == SAMPLE_RATE and clip.array.dtype == np.float32 and clip.array.ndim == 1
    assert clip.conversions == []
    assert clip.duration == pytest.approx(1.0)


def test_stereo_8k_24bit_is_converted_and_recorded(tmp_path):
    path = tmp_path / "odd.wav"
    stereo = np.stack([_tone(sr=8000), _tone(sr=8000, hz=330)], axis=1)
    sf.write(path, stereo, 8000, subtype="PCM_24")
    clip = load_audio(path)
    assert clip.sr == SAMPLE_RATE
    assert len(clip.array) == pytest.approx(SAMPLE_RATE, abs=2)
    assert "downmixed 2->1 channels" in clip.conversions
    assert "resampled 8000->16000" in clip.conversions
    assert "converted PCM_24->float32" in clip.conversions
    # The resampled tone keeps its frequency: the spectrum peaks near 220 Hz and 330 Hz, nowhere else.
    spectrum = np.abs(np.fft.rfft(clip.array))
    top = sorted(np.argsort(spectrum)[-2:] * SAMPLE_RATE / len(clip.array))
    assert top == pytest.approx([220, 330], abs=2)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "missing file"),
        (lambda p: p.write_bytes(b""), "unreadable"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), SAMPLE_RATE), "empty"),
        (lambda p: sf.write(p, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE), "silent"),
        (lambda p: p.write_bytes(b"this is a text file, not audio\n" * 20), "unreadable"),
        (lambda p: os.mkfifo(p), "not a regular file"),  # reading it would wait for a writer forever
    ],
    ids=["missing", "zero-bytes", "no-frames", "all-zero", "not-audio", "fifo"],
)
def test_bad_files_raise_audio_error_with_path_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert info.value.path == str(path)
    assert info.value.reason.startswith(reason)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_nan_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    data = _tone()
    data[100:200] = np.nan
    sf.write(path, data, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        load_audio(path)


def test_truncated_header_is_refused(tmp_path):
    path = tmp_path / "trunc.wav"
    sf.write(path, _tone(), SAMPLE_RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError, match="unreadable|empty"):
        load_audio(path)


def test_too_long_is_refused_not_cut(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _tone(seconds=45.0, sr=8000), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"too long: 45.0 s > 30 s"):
        load_audio(path, max_seconds=30)
    assert load_audio(path).duration == pytest.approx(45.0)


def test_check_array():
    tone = _tone(seconds=0.5)
    assert check_array(tone.astype(np.float64), SAMPLE_RATE).dtype == np.float32
    with pytest.raises(AudioError, match="silent"):
        check_array(np.full(SAMPLE_RATE, 1e-6, np.float32), SAMPLE_RATE, name="quiet")
    with pytest.raises(AudioError, match="silent"):  # a constant DC offset carries no sound
        check_array(np.full(SAMPLE_RATE, 0.5, np.float32), SAMPLE_RATE, name="dc")
    with pytest.raises(AudioError, match=r"too short: 0.000 s"):
        check_array(np.array([0.3], np.float32), SAMPLE_RATE, name="one sample")
    with pytest.raises(AudioError, match="inf"):
        check_array(np.append(tone, np.inf), SAMPLE_RATE)
    with pytest.raises(AudioError, match="mono"):
        check_array(np.zeros((2, 100), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="too long"):
        check_array(tone, SAMPLE_RATE, max_seconds=0.25)


def test_clipping_is_recorded_not_refused(tmp_path):
    path = tmp_path / "clipped.wav"
    sf.write(path, np.clip(_tone(amp=3.0), -1, 1), SAMPLE_RATE, subtype="PCM_16")
    clip = load_audio(path)
    [note] = clip.conversions
    assert note.startswith("clipped: ") and "% of samples at full scale" in note
    sf.write(path, _tone(amp=0.99), SAMPLE_RATE, subtype="PCM_16")  # loud, but the peaks only touch
    assert load_audio(path).conversions == []


def test_a_write_cut_by_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno
    import shutil
    import types

    from speechllm.audio import write_audio
    from speechllm.errors import one_line

    def disk_full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"RIFF")  # what got out before the disk filled
        raise sf.LibsndfileError(0, "")  # libsndfile's own words: "System error."

    monkeypatch.setattr(sf, "write", disk_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=0))
    target = tmp_path / "a.wav"
    with pytest.raises(OSError) as err:
        write_audio(target, np.zeros(10, np.float32), 16000, "PCM_16")
    assert err.value.errno == errno.ENOSPC and not target.exists()
    assert one_line(err.value) == f"error: cannot write ({target}): No space left on device"
