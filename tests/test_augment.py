"""Augmentation of the demo corpus's training clips: drawn per clip and recorded, never on held-out clips,
each keeping the clip's active speech level, and part of the corpus's fingerprint only when on."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from speechllm.audio import load_audio
from speechllm.config import ConfigError
from speechllm.corpus import generate_corpus
from speechllm.corpus.augment import _active_level, augmented, check_augment, plan_augmentation

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "conf/data/demo.yaml").read_text())
SR = 16000


def voiced(seconds=1.5, f0=140.0):
    """A buzzy vowel-like tone with pauses: active frames and quiet ones."""
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20))
    envelope = (np.sin(2 * np.pi * 1.5 * t) > -0.3).astype(float)
    return (0.1 * tone * envelope).astype(np.float32)


@pytest.mark.parametrize(
    "cfg, says",
    [
        ({"share": 2}, "data.augment.share=2"),
        ({"share": 0.5, "kinds": {"echo": {}}}, "['echo'] unknown"),
        ({"share": 0.5, "kinds": {}}, "needs at least one"),
        ({"share": 0.5, "kinds": {"noise": {"snr_db": [20, 5]}}}, "data.augment.kinds.noise.snr_db"),
    ],
)
def test_bad_settings_name_the_key(cfg, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        check_augment(cfg)


def test_only_training_clips_are_drawn_and_the_draw_is_seeded():
    plan = [{"split": "train" if i % 4 else "test"} for i in range(400)]
    cfg = {"share": 0.5, "kinds": DEMO["augment"]["kinds"]}
    plan_augmentation(plan, cfg, seed=0)
    assert all(r["augment"] == "" for r in plan if r["split"] == "test")
    steps = [json.loads(r["augment"]) for r in plan if r["augment"]]
    assert 120 < len(steps) < 180  # half of the 300 training clips
    assert {s["kind"] for s in steps} == {"telephone", "noise", "reverb"}
    assert all(5 <= s["snr_db"] <= 25 for s in steps if s["kind"] == "noise")
    again = [{"split": r["split"]} for r in plan]
    plan_augmentation(again, cfg, seed=0)
    assert [r["augment"] for r in again] == [r["augment"] for r in plan]


@pytest.mark.parametrize(
    "step", [{"kind": "telephone"}, {"kind": "noise", "snr_db": 10.0}, {"kind": "reverb", "rt60": 0.5}]
)
def test_each_kind_changes_the_sound_and_keeps_the_level(step):
    audio = voiced()
    out = augmented(audio, SR, {**step, "seed": 3}, peak_max=0.97)
    assert out.shape == audio.shape and out.dtype == np.float32 and np.abs(out).max() <= 0.97 + 1e-6
    assert not np.allclose(out, audio, atol=1e-3)
    assert abs(10 * np.log10(_active_level(out, SR) / _active_level(audio, SR))) < 0.5
    assert np.array_equal(out, augmented(audio, SR, {**step, "seed": 3}, peak_max=0.97))  # seeded
    if step["kind"] == "telephone":
        spectrum = np.abs(np.fft.rfft(out)) ** 2
        freqs = np.fft.rfftfreq(len(out), 1 / SR)
        assert spectrum[freqs > 3500].sum() < 1e-6 * spectrum.sum()


def test_the_corpus_augments_training_clips_and_records_how(tmp_path):
    cfg = {**DEMO, "size": 6, "variants": {"male": ["m2"], "female": ["f2"]}, "test_variants": []}
    plain = generate_corpus(tmp_path / "plain", cfg, workers=2)
    on = {**cfg, "augment": {"share": 1.0, "kinds": {"telephone": {}}}}
    out = generate_corpus(tmp_path / "augmented", on, workers=2)
    with open(out / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["split"]: bool(r["augment"]) for r in rows} == {"train": True, "test": False}
    for row in rows:
        same = np.array_equal(
            load_audio(out / row["file_name"]).array, load_audio(plain / row["file_name"]).array
        )
        assert same == (row["split"] == "test")
    # Turning augmentation on rebuilds a corpus made without it; off, its fingerprint is the old one.
    stamp = (plain / "metadata.csv").stat().st_mtime_ns
    generate_corpus(tmp_path / "plain", {**cfg, "augment": {"share": 0.0}})
    assert (plain / "metadata.csv").stat().st_mtime_ns == stamp
    generate_corpus(tmp_path / "plain", on)
    assert (plain / "metadata.csv").stat().st_mtime_ns != stamp
