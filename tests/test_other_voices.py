"""Flite voices in the demo corpus: the same share of each gender's training clips, each to a voice of its
gender and accent, every label's balance kept, held-out clips left to espeak-ng, pitch and speed as the
levels ask."""

import csv
from collections import Counter
from pathlib import Path

import pytest
import yaml

from speechllm.audio import load_audio
from speechllm.config import ConfigError
from speechllm.corpus import generate_corpus
from speechllm.corpus.espeak import check_other_voices, plan_corpus, plan_other_voices
from speechllm.describe.features import Clip, median_f0

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "conf/data/demo.yaml").read_text())
LABELS = ("split", "text", "gender", "accent", "pitch", "speed", "volume")


def demo_plan(size=200):
    levels = {
        "pitch": ["high", "low", "normal"],
        "speed": ["fast", "normal", "slow"],
        "volume": ["loud", "normal", "quiet"],
    }
    return plan_corpus(size, 0, DEMO["accents"], DEMO["variants"], DEMO["test_variants"], 0.2, levels)


def test_each_gender_gives_the_same_share_to_voices_of_its_gender_and_accent():
    plan = demo_plan()
    before = [{k: row[k] for k in LABELS} for row in plan]
    cfg = check_other_voices({**DEMO["other_voices"], "share": 0.2}, DEMO["variants"], DEMO["accents"])
    plan_other_voices(plan, cfg, seed=0)
    assert [{k: row[k] for k in LABELS} for row in plan] == before  # every label as planned
    flite = [r for r in plan if r["synthesizer"] == "flite"]
    assert all(r["split"] == "train" for r in flite)
    train = Counter(r["gender"] for r in plan if r["split"] == "train")
    moved = Counter(r["gender"] for r in flite)
    assert moved == {g: round(0.2 * n) for g, n in train.items()}
    for row in flite:
        assert DEMO["other_voices"]["voices"][row["voice"]] == {
            "gender": row["gender"],
            "accent": row["accent"],
        }
        assert row["variant"] == ""
    assert {r["voice"] for r in flite} == {"kal16", "awb", "slt"}
    again = demo_plan()
    plan_other_voices(again, cfg, seed=0)
    assert again == plan  # seeded


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"share": 1.5}, "data.other_voices.share=1.5"),
        ({"share": 0.2, "voices": {}}, "needs at least one of data.other_voices.voices"),
        (
            {"share": 0.2, "voices": {"kal16": {"gender": "man", "accent": "american"}}},
            "data.other_voices.voices.kal16",
        ),
        (
            {"share": 0.2, "voices": {"kal16": {"gender": "male", "accent": "texan"}}},
            "data.other_voices.voices.kal16",
        ),
        ({"share": 0.2, "voices": {"kal16": {"gender": "male", "age": "old"}}}, "give exactly gender and accent"),
    ],
)
def test_bad_other_voices_are_refused_by_key(cfg, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        check_other_voices(cfg, DEMO["variants"], DEMO["accents"])


def test_a_share_the_voices_cannot_cover_is_refused():
    # The only other female voice speaks American English: a quarter of the female clips at most.
    cfg = check_other_voices({**DEMO["other_voices"], "share": 0.5}, DEMO["variants"], DEMO["accents"])
    with pytest.raises(ConfigError, match=r"female training clips.*\['american'\]"):
        plan_other_voices(demo_plan(), cfg, seed=0)


def test_the_corpus_speaks_flite_clips_at_the_planned_pitch_and_pace(tmp_path):
    cfg = {
        **DEMO,
        "size": 16,
        "test_size": 4,
        "accents": {"american": "en-us"},
        "variants": {"male": ["m2"], "female": ["f2"]},
        "test_variants": [],
        "other_voices": {
            "share": 0.5,
            "voices": {v: DEMO["other_voices"]["voices"][v] for v in ("kal16", "slt")},
        },
    }
    out = generate_corpus(tmp_path / "corpus", cfg, workers=2)
    with open(out / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    flite = [r for r in rows if r["synthesizer"] == "flite"]
    assert Counter(r["voice"] for r in flite) == {"kal16": 3, "slt": 3}
    assert all(r["synthesizer"] == "espeak-ng" for r in rows if r["split"] == "test")
    for row in flite:
        clip = load_audio(out / row["file_name"])
        f0 = median_f0(Clip(row["clip_id"], clip.array, clip.sr), 50, 600)
        target = DEMO["pitch_hz"][row["gender"]][row["pitch"]]
        assert abs(f0 / target - 1) < 0.12, (row, f0)
        assert row["espeak_pitch"] == "" and float(row["flite_duration_stretch"]) > 0
    # The same sentence-independent pace per level: the slow clips' stretch is the largest.
    stretch = {r["speed"]: float(r["flite_duration_stretch"]) for r in flite if r["voice"] == "kal16"}
    assert sorted(stretch, key=stretch.get) == [s for s in ("fast", "normal", "slow") if s in stretch]


def test_a_voice_whose_pitch_cannot_be_set_is_refused():
    from speechllm.corpus.espeak import CALIBRATION_TEXT
    from speechllm.corpus.flite import FliteError, calibrate_flite

    # flite's rms speaks at about 101 Hz whatever int_f0_target_mean asks: its pitch labels would be false.
    with pytest.raises(FliteError, match="'rms' does not follow int_f0_target_mean"):
        calibrate_flite("rms", {"low": 80}, {"slow": 3.0}, CALIBRATION_TEXT)
    with pytest.raises(FliteError, match="no voice 'nobody'"):
        calibrate_flite("nobody", {"low": 80}, {"slow": 3.0}, CALIBRATION_TEXT)
