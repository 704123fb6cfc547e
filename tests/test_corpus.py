"""The espeak-ng demo corpus and the audiofolder reader."""

import csv
import re
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from speechllm.config import ConfigError
from speechllm.corpus import AudioFolderError, EspeakError, generate_corpus, read_audiofolder, speak
from speechllm.corpus.espeak import calibrate_pitch, plan_corpus
from speechllm.corpus.sentences import SENTENCES

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "conf/data/demo.yaml").read_text())
LEVELS = {
    "pitch": ["low", "normal", "high"],
    "speed": ["slow", "normal", "fast"],
    "volume": ["quiet", "loud"],
}


def _plan(size=300, seed=0):
    return plan_corpus(
        size, seed, DEMO["accents"], DEMO["variants"], DEMO["test_variants"], DEMO["test_fraction"], LEVELS
    )


def test_sentences_are_many_and_unique():
    assert len(SENTENCES) >= 100 and len(set(SENTENCES)) == len(SENTENCES)


def test_plan_is_deterministic_and_the_test_split_is_unseen():
    plan = _plan()
    assert plan == _plan() and plan != _plan(seed=1)
    train = [r for r in plan if r["split"] == "train"]
    test = [r for r in plan if r["split"] == "test"]
    assert len(test) == round(300 * DEMO["test_fraction"])
    assert not {r["text"] for r in train} & {r["text"] for r in test}  # unseen sentences
    assert not {r["variant"] for r in train} & set(DEMO["test_variants"])
    assert {r["variant"] for r in test} & set(DEMO["test_variants"])  # some unseen voices
    assert {r["variant"] for r in test} - set(DEMO["test_variants"])  # and some seen ones
    for row in plan:
        assert row["variant"] in DEMO["variants"][row["gender"]]
        assert row["voice"] == DEMO["accents"][row["accent"]]
    assert {r["accent"] for r in plan} == set(DEMO["accents"])


def test_test_size_fixes_the_test_split_while_the_training_split_grows():
    def sizes(size, test_size):
        plan = plan_corpus(size, 0, DEMO["accents"], DEMO["variants"], DEMO["test_variants"],
                           DEMO["test_fraction"], LEVELS, test_size=test_size)  # fmt: skip
        return Counter(r["split"] for r in plan)

    assert sizes(200, 40) == {"train": 160, "test": 40}
    assert sizes(840, 40) == {"train": 800, "test": 40}
    assert sizes(200, None) == {"train": 160, "test": 40}  # test_fraction of size
    with pytest.raises(ConfigError, match="data.test_size: the test split would hold 40 of 30 clips"):
        sizes(30, 40)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"size": 0}, "data.size=0"),
        ({"size": -3}, "data.size=-3"),
        ({"test_fraction": 1.0}, "data.test_fraction=1.0"),
        ({"test_variants": ["zz9"]}, "data.test_variants: ['zz9']"),
        ({"test_variants": ["f1", "f2", "f3", "f4", "f5"]}, "no female voice"),
    ],
)
def test_a_corpus_that_cannot_be_planned_names_the_data_key(change, says):
    args = {"size": 200, "seed": 0, "accents": DEMO["accents"], "variants": DEMO["variants"],
            "test_variants": DEMO["test_variants"], "test_fraction": DEMO["test_fraction"], "levels": LEVELS}  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(says)):
        plan_corpus(**{**args, **change})


def test_every_label_is_balanced_within_each_split():
    plan = _plan(size=120)
    for split in ("train", "test"):
        rows = [r for r in plan if r["split"] == split]
        for name in ("gender", "accent", *LEVELS):
            counts = Counter(r[name] for r in rows).values()
            assert max(counts) - min(counts) <= 1, (split, name, counts)


def test_speak_writes_audio_and_reports_failures(tmp_path):
    path = speak("-starts with a dash", tmp_path / "a" / "x.wav", voice="en-gb", variant="f2")
    assert sf.info(path).frames > 1000
    # espeak-ng itself would fall back to its default voice and succeed: wrong labels, so refused here.
    with pytest.raises(EspeakError, match="no voice 'no-such-voice'"):
        speak("hello", tmp_path / "y.wav", voice="no-such-voice")
    with pytest.raises(EspeakError, match="no voice variant 'f9'"):
        speak("hello", tmp_path / "y.wav", variant="f9")
    assert sf.info(speak("hello", tmp_path / "z.wav", voice="en", variant="m1")).frames > 0


def test_calibrated_pitch_rises_with_the_target():
    p = calibrate_pitch("f1", {"low": 165, "normal": 210, "high": 265})
    assert 0 <= p["low"] < p["normal"] < p["high"] <= 99


def test_generate_small_corpus_and_rerun_is_a_noop(tmp_path):
    cfg = {**DEMO, "size": 6, "variants": {"male": ["m2"], "female": ["f2"]}, "test_variants": []}
    out = generate_corpus(tmp_path / "corpus", cfg, workers=2)
    with open(out / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {"file_name", "split", "gender", "accent", "pitch", "speed", "volume", "text", "voice"} <= set(
        rows[0]
    )
    info = sf.info(out / rows[0]["file_name"])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    stamp = (out / "metadata.csv").stat().st_mtime_ns
    generate_corpus(tmp_path / "corpus", cfg)
    assert (out / "metadata.csv").stat().st_mtime_ns == stamp
    # A config that cannot be planned fails before anything of the finished corpus is deleted.
    with pytest.raises(ConfigError, match="data.size=0"):
        generate_corpus(tmp_path / "corpus", {**cfg, "size": 0})
    assert (out / "metadata.csv").stat().st_mtime_ns == stamp and (out / rows[0]["file_name"]).is_file()

    inputs = read_audiofolder(out)
    assert [r["clip_id"] for r in inputs] == [r["clip_id"] for r in rows]
    assert inputs[0]["label_gender"] == rows[0]["gender"] and Path(inputs[0]["audio_path"]).is_absolute()


def test_audiofolder_errors(tmp_path):
    with pytest.raises(AudioFolderError, match="no metadata.csv"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.csv").write_text("path,label\na.wav,x\n")
    with pytest.raises(AudioFolderError, match="file_name"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,emotion\na.wav,happy\nsub/b.flac,\n")
    rows = read_audiofolder(tmp_path)
    assert [r["clip_id"] for r in rows] == ["a", "sub/b"]
    assert rows[0] == {
        "clip_id": "a",
        "audio_path": str(tmp_path.resolve() / "a.wav"),
        "split": "train",
        "label_emotion": "happy",
    }
    # One stem, two files: two clips, told apart by their extension.
    (tmp_path / "metadata.csv").write_text("file_name\na.wav\na.mp3\nb.wav\n")
    assert [r["clip_id"] for r in read_audiofolder(tmp_path)] == ["a.wav", "a.mp3", "b"]
    (tmp_path / "metadata.csv").write_text("file_name\na.wav\nb.wav\na.wav\n")
    with pytest.raises(AudioFolderError, match=r"lines 2 and 4: the same file 'a.wav' twice"):
        read_audiofolder(tmp_path)
    # A spreadsheet saved in Latin-1: the line and the byte, not a UnicodeDecodeError.
    (tmp_path / "metadata.csv").write_bytes(b"file_name,text\na.wav,hello\nb.wav,caf\xe9\n")
    with pytest.raises(AudioFolderError, match=r"line 3: not UTF-8 \(byte b'\\xe9'\)"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,clip_id\na.wav,x\nb.wav,x\n")
    with pytest.raises(AudioFolderError, match=r"lines 2 and 3: the same clip id 'x' twice"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,gender\na.wav,male\n,female\n")
    with pytest.raises(AudioFolderError, match="line 3: empty file_name"):
        read_audiofolder(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,gender\n")
    with pytest.raises(AudioFolderError, match="no rows below the header"):
        read_audiofolder(tmp_path)
    for outside in ("../elsewhere.wav", "/etc/passwd", "sub/../../x.wav"):
        (tmp_path / "metadata.csv").write_text(f"file_name\na.wav\n{outside}\n")
        with pytest.raises(AudioFolderError, match=r"line 3: file_name .* is outside"):
            read_audiofolder(tmp_path)


def test_audiofolder_reads_spreadsheet_exports(tmp_path):
    # A byte-order mark and spaces after the commas, as spreadsheets write them.
    (tmp_path / "metadata.csv").write_bytes(
        "\ufefffile_name, split, gender\na.wav, test, female\n,,\n".encode()
    )
    [row] = read_audiofolder(tmp_path)  # the trailing blank row is no clip
    assert (row["clip_id"], row["split"], row["label_gender"]) == ("a", "test", "female")
