"""Real recordings for evaluation only: Debian's speech prompts and test utterances as a labelled audiofolder.

No labelled speech corpus is packaged on the registries this project installs from, but Debian ships a few
real recordings with their transcripts (`make setup` installs them):
- `asterisk-core-sounds-en-wav`: the telephone prompts of one professional female US-English voice
  (Allison Smith, named in the package's folder `en_US_f_Allison` and its credits), 8 kHz; transcripts in
  `asterisk-core-sounds-en`'s `core-sounds-en.txt.gz`, one `name: text` line per prompt. CC-BY-SA-3.0.
- `pocketsphinx-testdata`: `librivox/`, a male reader of *Sense and Sensibility* at 16 kHz, and `cards/`, a
  male voice naming playing cards, each with a transcription file.

Labels: gender from the packages' credits, accent where the package names it (the US-English prompts),
text from the transcripts; pitch, speed and volume are measured as the describe stage measures them
(`speechllm.describe.signal`), since no one labelled them. The folder has no `split` column, so an
evaluation scores every row, and no row is ever a training clip. Every male recording is kept (they are
few); the female prompts are a seeded draw of spoken prompts (not tones) between `min_seconds` and
`max_seconds`.

Usage:
    python -m speechllm.eval.real_voices --out data/real_voices
    python evaluate.py checkpoint=runs/demo/train/checkpoints/final eval.audiofolder=data/real_voices \
        eval.max_clips=null eval.questions_per_task=5
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
POCKETSPHINX_DIR = Path("/usr/share/pocketsphinx/test/data")
PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en", "pocketsphinx-testdata")
# The attributes measured from the audio, as the describe stage measures them; `speaking_rate` is the
# `speed` task's attribute and reads syllables from the transcript.
MEASURED = {"pitch": "pitch", "speaking_rate": "speed", "volume": "volume"}


class RealVoicesError(RuntimeError):
    """A source package is missing or a file in it cannot be read; the message names it."""


@dataclass
class Recording:
    path: Path
    gender: str
    text: str
    source: str
    accent: str = ""


def asterisk_prompts(
    folder: Path = ASTERISK_DIR, transcripts: Path = ASTERISK_TRANSCRIPTS
) -> list[Recording]:
    """The female US-English prompts that have a spoken transcript (bracketed ones are tones or silence)."""
    texts = {}
    with gzip.open(transcripts, "rt", encoding="utf-8") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";") and text.strip() and not text.strip().startswith("["):
                texts[name.strip()] = " ".join(text.split())
    found = []
    for path in sorted(folder.rglob("*.wav")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in texts:
            found.append(Recording(path, "female", texts[name], "asterisk-core-sounds-en", accent="american"))
    return found


_SPHINX_LINE = re.compile(r"^<s>(?P<text>.*)</s>\s*\((?P<id>[^)]+)\)\s*$")


def pocketsphinx_readers(folder: Path = POCKETSPHINX_DIR) -> list[Recording]:
    """The male recordings of `librivox/` and `cards/`, with their transcriptions."""
    found = []
    for sub, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (folder / sub / listing).read_text(encoding="utf-8").splitlines():
            match = _SPHINX_LINE.match(line.strip())
            if not match:
                continue
            path = folder / sub / f"{match['id']}.wav"
            text = " ".join(match["text"].split())
            found.append(
                Recording(path, "male", text[:1].upper() + text[1:] + ".", f"pocketsphinx-testdata/{sub}")
            )
    return found


def select(recordings: list[Recording], female_clips: int, min_seconds: float, max_seconds: float, seed: int):
    """Every male recording and a seeded draw of `female_clips` female ones within the length bounds."""
    male = [r for r in recordings if r.gender == "male"]
    female = [
        r
        for r in recordings
        if r.gender == "female" and min_seconds <= sf.info(r.path).duration <= max_seconds
    ]
    random.Random(seed).shuffle(female)
    return male + sorted(female[:female_clips], key=lambda r: str(r.path))


def measure(rows: list[dict]) -> list[dict]:
    """Pitch, speed and volume words of each row, measured as the describe stage measures them."""
    from speechllm.data.describe_stage import describe_processor

    attributes = ["transcript", "gender", *MEASURED]
    result = describe_processor(
        {
            "attributes": attributes,
            "renderer": "desta2",
            "max_seconds": 30,
            "overrides": {"transcript": {"methods": ["label"]}, "gender": {"methods": ["label"]}},
        }
    )(rows)
    if result.rejects:
        raise RealVoicesError(f"the describe stage rejected real recordings: {result.rejects}")
    return result.rows


def build(
    out: str | Path,
    female_clips: int = 30,
    min_seconds: float = 1.5,
    max_seconds: float = 12.0,
    seed: int = 0,
    asterisk_dir: Path = ASTERISK_DIR,
    asterisk_transcripts: Path = ASTERISK_TRANSCRIPTS,
    pocketsphinx_dir: Path = POCKETSPHINX_DIR,
) -> Path:
    """Write the audiofolder `out` (`wavs/` with copies of the original files, `metadata.csv`).

    Args:
        out: the folder to write.
        female_clips: female prompts drawn (every male recording is kept).
        min_seconds, max_seconds: the female prompts' length bounds.
        seed: the draw's seed.
        asterisk_dir, asterisk_transcripts, pocketsphinx_dir: where the packages put their files.

    Returns:
        The folder.

    Raises:
        RealVoicesError: a package is not installed.
    """
    missing = [str(p) for p in (asterisk_dir, asterisk_transcripts, pocketsphinx_dir) if not Path(p).exists()]
    if missing:
        raise RealVoicesError(
            f"{', '.join(missing)} not found: install the Debian packages {' '.join(PACKAGES)} (make setup does)"
        )
    recordings = asterisk_prompts(Path(asterisk_dir), Path(asterisk_transcripts)) + pocketsphinx_readers(
        Path(pocketsphinx_dir)
    )
    chosen = select(recordings, female_clips, min_seconds, max_seconds, seed)
    out = Path(out)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, rec in enumerate(chosen):
        name = f"wavs/{k:03d}_{rec.gender}_{rec.path.stem}.wav"
        shutil.copyfile(rec.path, out / name)
        rows.append(
            {
                "clip_id": Path(name).stem,
                "audio_path": str((out / name).resolve()),
                "file_name": name,
                "label_gender": rec.gender,
                "label_text": rec.text,
            }
        )
    measured = {r["clip_id"]: r for r in measure(rows)}
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["file_name", "gender", "accent", "text", *MEASURED.values(), "source"])
        writer.writeheader()
        for row, rec in zip(rows, chosen, strict=True):
            got = measured[row["clip_id"]]
            writer.writerow(
                {
                    "file_name": row["file_name"],
                    "gender": rec.gender,
                    "accent": rec.accent,
                    "text": rec.text,
                    **{task: got[attribute] for attribute, task in MEASURED.items()},
                    "source": rec.source,
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="the audiofolder to write")
    parser.add_argument(
        "--female-clips", type=int, default=30, help="female prompts drawn (every male one is kept)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = build(args.out, female_clips=args.female_clips, seed=args.seed)
    with open(folder / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_gender = {g: sum(r["gender"] == g for r in rows) for g in ("female", "male")}
    print(f"{folder}: {len(rows)} real recordings ({by_gender['female']} female, {by_gender['male']} male)")


if __name__ == "__main__":
    main()
