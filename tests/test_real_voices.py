"""The real-voice evaluation folder: built from the Debian packages' layout (here a small copy of it
spoken by espeak-ng), labelled from the credits and transcripts, measured, never split for training."""

import csv
import gzip

import pytest

from speechllm.corpus.audiofolder import read_audiofolder
from speechllm.eval.real_voices import RealVoicesError, build


@pytest.fixture(scope="module")
def packages(tmp_path_factory, espeak):
    root = tmp_path_factory.mktemp("debian")
    asterisk = root / "asterisk" / "en_US_f_Allison"
    (asterisk / "digits").mkdir(parents=True)
    prompts = {
        "auth-thankyou": "Thank you for calling, please hold the line.",
        "digits/5": "Five.",
        "agent-pass": "Please enter your password followed by the pound key.",
        "beep": "[this is a simple beep tone]",  # a tone, not speech: never chosen
    }
    for name, text in prompts.items():
        espeak(text.strip("[]"), asterisk / f"{name}.wav", voice="en-us", variant="f3")
    transcripts = root / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt") as f:
        f.write("; Core Asterisk Sounds in English\n\n" + "".join(f"{k}: {v}\n" for k, v in prompts.items()))
    sphinx = root / "pocketsphinx"
    for sub, listing, ids in (
        ("librivox", "transcription", ["a-01", "a-02"]),
        ("cards", "cards.transcription", ["001"]),
    ):
        (sphinx / sub).mkdir(parents=True)
        lines = []
        for i in ids:
            espeak(
                "he was not an ill disposed young man", sphinx / sub / f"{i}.wav", voice="en-us", variant="m3"
            )
            lines.append(f"<s> he was not an ill disposed young man </s> ({i})")
        (sphinx / sub / listing).write_text("\n".join(lines) + "\n")
    return {"asterisk_dir": asterisk, "asterisk_transcripts": transcripts, "pocketsphinx_dir": sphinx}


def test_builds_a_labelled_folder_of_every_male_and_a_draw_of_female_recordings(packages, tmp_path):
    folder = build(tmp_path / "real", female_clips=2, min_seconds=0.1, **packages)
    with open(folder / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["gender"] for r in rows) == ["female", "female", "male", "male", "male"]
    assert "split" not in rows[0]  # an evaluation scores every row; nothing here is ever trained on
    assert {r["accent"] for r in rows if r["gender"] == "female"} == {"american"}
    assert {r["accent"] for r in rows if r["gender"] == "male"} == {""}  # the readers' accent is not credited
    assert all(r["pitch"] in ("low", "normal", "high") and r["volume"] and r["speed"] for r in rows)
    assert "He was not an ill disposed young man." in {r["text"] for r in rows}
    assert not any("beep" in r["file_name"] for r in rows)
    assert len(read_audiofolder(str(folder), default_split="")) == 5  # readable as any audiofolder
    # The draw is seeded.
    again = build(tmp_path / "again", female_clips=2, min_seconds=0.1, **packages)
    assert (again / "metadata.csv").read_text() == (folder / "metadata.csv").read_text()


def test_missing_packages_are_named(packages, tmp_path):
    with pytest.raises(RealVoicesError, match="pocketsphinx-testdata.*make setup"):
        build(tmp_path / "x", **{**packages, "pocketsphinx_dir": tmp_path / "absent"})
