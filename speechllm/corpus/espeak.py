"""The espeak-ng demo corpus: sentences spoken with known gender, accent, pitch, speed and volume.

A share of each gender's training clips can be spoken by flite's voices instead (`data.other_voices`,
speechllm/corpus/flite.py), so that no label means "espeak"; held-out clips are always espeak's.

Labels are known by construction: gender from the voice variant (m1-m7 male, f1-f5 female), accent from
the espeak-ng voice (en-us, British `en`, en-gb-scotland, en-029), pitch/speed/volume from the `-p`,
`-s` and `-a` levels. The corpus is written as an audiofolder: `wavs/*.wav` (16 kHz, 16-bit mono) and
`metadata.csv` with `file_name`, `split` and plain label columns (`gender`, `accent`, `pitch`, `speed`,
`volume`, `text`, `voice`, `variant`, and the espeak settings used).

Pitch: espeak's `-p` scales each variant's own base pitch, and female variants start about an octave
higher and differ among themselves by 25%, so one `-p` per level would put a high male voice above a low
female one. Each level is instead a target F0 per gender (`pitch_hz`), and the `-p` that reaches it is
found per variant by measuring a calibration sentence, so "high" means high for that speaker's gender.

Volume: espeak's `-a` is a plain gain followed by a hard clip, and some voices (en-gb-scotland, en-029)
reach full scale already near `-a 100`, so loud `-a` levels clip. Every clip is instead spoken at one
`-a` that never clips (`amplitude`) and scaled by a recorded, deterministic gain (`gain_db`) to its
level's active speech level (`volume_dbfs`, measured as the `volume` attribute measures it), lowered
where needed so that no peak exceeds `peak_max`.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from speechllm.audio import SAMPLE_RATE, load_audio, write_audio
from speechllm.config import ConfigError
from speechllm.corpus.audiofolder import CORPUS_MARKER, corpus_is_current
from speechllm.corpus.augment import augmented, check_augment, plan_augmentation
from speechllm.corpus.flite import calibrate_flite, flite_voices, speak_flite
from speechllm.corpus.sentences import SENTENCES
from speechllm.describe.features import Clip, active_mask, active_seconds, frame_rms, median_f0

logger = logging.getLogger(__name__)

# espeak-ng 1.51 silently ignores a "+variant" on its `en-gb` alias; `en` is the same British voice.
_VOICE_ALIASES = {"en-gb": "en"}
CALIBRATION_TEXT = "She asked whether the library would be open on Sunday morning."
_CALIBRATION_P = (0, 25, 50, 75, 99)
# Part of the corpus fingerprint: raised whenever plan_corpus draws differently for the same config,
# so an existing corpus is rebuilt instead of silently kept.
PLAN_VERSION = 2


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed; the message says which and how to fix it."""


def speak(
    text: str,
    path: str | os.PathLike,
    voice: str = "en-us",
    variant: str | None = None,
    pitch: int = 50,
    speed: int = 175,
    amplitude: int = 100,
) -> str:
    """Speak `text` into a wav file with espeak-ng (at espeak's own rate, 22050 Hz).

    Args:
        text: what to say.
        path: output wav path (parent folders are created).
        voice: an espeak-ng voice, e.g. `en-us`, `en-gb`, `en-gb-scotland`, `en-029`.
        variant: a voice variant such as `m3` or `f2` (None: the voice's default, male).
        pitch: `-p`, 0-99, base pitch relative to the variant's own.
        speed: `-s`, words per minute.
        amplitude: `-a`, 0-200.

    Returns:
        `path` as a string.

    Raises:
        EspeakError: espeak-ng is not installed or failed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakError("espeak-ng is not installed: `apt-get install espeak-ng` (or `make setup`)")
    # espeak-ng falls back to its default voice, with exit status 0, on an unknown voice or variant,
    # which would give clips the wrong labels: check the names first.
    voices, variants = _installed_voices(exe)
    if voice not in voices:
        raise EspeakError(
            f"espeak-ng has no voice {voice!r}; English ones: {sorted(v for v in voices if v.startswith('en'))}"
        )
    if variant and variant.lower() not in variants:
        raise EspeakError(f"espeak-ng has no voice variant {variant!r} (e.g. m1-m7, f1-f5)")
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    voice = _VOICE_ALIASES.get(voice, voice)
    name = f"{voice}+{variant}" if variant else voice
    # Text goes through stdin, so text starting with "-" is never read as an option; no shell involved.
    cmd = [
        exe,
        "-w",
        path,
        "-v",
        name,
        "-p",
        str(int(pitch)),
        "-s",
        str(int(speed)),
        "-a",
        str(int(amplitude)),
    ]
    result = subprocess.run([*cmd, "--stdin"], input=text, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not os.path.exists(path) or os.path.getsize(path) <= 44:
        raise EspeakError(
            f"espeak-ng failed ({' '.join(cmd)}): {result.stderr.strip() or 'no audio written'}"
        )
    return path


@functools.lru_cache(maxsize=1)
def _installed_voices(exe: str) -> tuple[frozenset[str], frozenset[str]]:
    """(voice names and languages, variant names) known to the installed espeak-ng, lowercased."""

    def listing(*args: str) -> list[list[str]]:
        out = subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout
        return [line.split() for line in out.splitlines()[1:] if line.strip()]

    # Columns: Pty, Language, Age/Gender, VoiceName, File, ...; a voice is named by language, name or file.
    voices = {x for cols in listing("--voices") for x in (cols[1], cols[3], cols[4], cols[4].split("/")[-1])}
    variants = {cols[4].removeprefix("!v/").lower() for cols in listing("--voices=variant")}
    return frozenset(voices), frozenset(variants)


def calibrate_pitch(variant: str, targets_hz: dict[str, float], voice: str = "en-us") -> dict[str, int]:
    """The `-p` value that makes `variant` speak at each target F0.

    F0 is measured (median over speech-active frames) on a calibration sentence at a few `-p` values and
    `-p` is interpolated on log F0, which espeak raises monotonically with `-p`.

    Args:
        variant: a voice variant (`m1`, `f3`, ...).
        targets_hz: level word -> target F0 in Hz.
        voice: the voice to calibrate with (espeak's pitch does not depend on the accent voice).

    Returns:
        level word -> `-p` (0-99).
    """
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in _CALIBRATION_P:
            wav = speak(CALIBRATION_TEXT, Path(tmp) / f"{p}.wav", voice=voice, variant=variant, pitch=p)
            clip = load_audio(wav)
            measured.append(median_f0(Clip("calibration", clip.array, clip.sr), 50, 600))
    log_f0 = np.log(np.maximum.accumulate(np.asarray(measured)))  # guard monotonicity for np.interp
    return {
        level: int(round(float(np.interp(np.log(hz), log_f0, _CALIBRATION_P))))
        for level, hz in targets_hz.items()
    }


def level_gain(audio: np.ndarray, target_dbfs: float, peak_max: float, sr: int = SAMPLE_RATE) -> float:
    """The gain that brings `audio`'s active speech level to `target_dbfs`, capped so no peak exceeds `peak_max`.

    The level is the `volume` attribute's: RMS over speech-active frames, in dBFS.

    Args:
        audio: float waveform. Shapes: (num_samples,).
        target_dbfs: wanted active speech level.
        peak_max: largest allowed absolute sample after the gain.
        sr: sample rate of `audio`.

    Returns:
        The linear gain.
    """
    clip = Clip("level", audio, sr)
    rms = frame_rms(clip)[active_mask(clip)].astype(np.float64)
    level = 10 * np.log10(float(np.mean(rms**2)) + 1e-12)
    gain = 10 ** ((target_dbfs - level) / 20)
    peak = float(np.max(np.abs(audio))) or 1.0
    return min(gain, peak_max / peak)


def plan_corpus(
    size: int,
    seed: int,
    accents: dict[str, str],
    variants: dict[str, list[str]],
    test_variants: list[str],
    test_fraction: float,
    levels: dict[str, list[str]],
    sentences: tuple[str, ...] = SENTENCES,
    test_size: int | None = None,
) -> list[dict]:
    """Choose every clip's sentence, voice and levels (no audio yet). Deterministic for a seed.

    The test split holds `test_fraction` of the sentences (never spoken in train) and is the only split
    that uses `test_variants`; test clips draw their variant from all variants, so part of the test set
    is an unseen voice and part a seen voice saying unseen words. Within each split every label
    (gender, accent, each level) takes each of its values equally often, to within one.

    Args:
        size: number of clips.
        seed: random seed.
        accents: accent word -> espeak voice.
        variants: gender word -> voice variants.
        test_variants: variants used only in the test split.
        test_fraction: share of sentences, and of clips (unless `test_size`), in the test split.
        levels: `pitch`/`speed`/`volume` -> level words to draw from.
        sentences: the sentence pool.
        test_size: clips in the test split (None: `test_fraction` of `size`), so the training split can
            grow while the test split, and the cost of evaluating it, stays the same.

    Returns:
        One dict per clip: clip_id, split, text, gender, variant, accent, voice, pitch, speed, volume.
    """
    if not isinstance(size, int) or size < 2:
        raise ConfigError(f"data.size={size!r}: the corpus needs at least 2 clips (one per split)")
    if not 0 < test_fraction < 1:
        raise ConfigError(
            f"data.test_fraction={test_fraction!r} is outside (0, 1): both splits need sentences"
        )
    n_test = round(size * test_fraction) if test_size is None else test_size
    if not 0 < n_test < size:
        what = "data.test_size" if test_size is not None else "data.test_fraction"
        raise ConfigError(
            f"{what}: the test split would hold {n_test} of {size} clips (data.size); both splits need clips"
        )
    known = {v for names in variants.values() for v in names}
    unknown = sorted(set(test_variants) - known)
    if unknown:
        raise ConfigError(
            f"data.test_variants: {unknown} are none of data.variants' voices ({sorted(known)})"
        )
    for gender, names in variants.items():
        if not set(names) - set(test_variants):
            raise ConfigError(
                f"data.test_variants holds every {gender} variant ({names}): training would have no {gender} voice"
            )
    rng = random.Random(seed)
    pool = list(sentences)
    rng.shuffle(pool)
    n_test_sentences = max(1, round(len(pool) * test_fraction))
    test_sentences, train_sentences = pool[:n_test_sentences], pool[n_test_sentences:]
    plan = []
    for split, n in (("train", size - n_test), ("test", n_test)):
        # Every label is balanced within a split (each value drawn equally often, in shuffled order), so a
        # task's majority-class chance is 1/classes rather than whatever a random draw happened to favour.
        genders = _balanced(sorted(variants), n, rng)
        accent_words = _balanced(sorted(accents), n, rng)
        drawn = {name: _balanced(words, n, rng) for name, words in levels.items()}
        texts = _balanced(test_sentences if split == "test" else train_sentences, n, rng)
        for j in range(n):
            gender, accent = genders[j], accent_words[j]
            allowed = [v for v in variants[gender] if split == "test" or v not in test_variants]
            plan.append(
                {
                    "clip_id": f"{len(plan):05d}",
                    "split": split,
                    "text": texts[j],
                    "gender": gender,
                    "variant": rng.choice(allowed),
                    "accent": accent,
                    "voice": accents[accent],
                    **{name: values[j] for name, values in drawn.items()},
                }
            )
    return plan


def _calibrate_flite_voices(names: list[str], voices: dict, cfg: dict, pool: ThreadPoolExecutor) -> dict:
    """Each flite voice's settings per pitch and speed level (speechllm.corpus.flite.calibrate_flite), the speed
    levels measured against espeak-ng's en-us voice at each level's words per minute."""
    if not names:
        return {}
    with tempfile.TemporaryDirectory() as tmp:

        def espeak_seconds(level: str) -> float:
            wav = speak(CALIBRATION_TEXT, Path(tmp) / f"{level}.wav", speed=cfg["speed_wpm"][level])
            clip = load_audio(wav)
            return active_seconds(Clip("calibration", clip.array, clip.sr))

        levels = sorted(cfg["speed_wpm"])
        reference = dict(zip(levels, pool.map(espeak_seconds, levels), strict=True))

    def settings(name: str) -> dict:
        return calibrate_flite(name, cfg["pitch_hz"][voices[name]["gender"]], reference, CALIBRATION_TEXT)

    return dict(zip(names, pool.map(settings, names), strict=True))


def _balanced(values: list[str], n: int, rng: random.Random) -> list[str]:
    """`n` draws from `values` with every value used equally often (to within one), in shuffled order."""
    values = list(values)
    rng.shuffle(values)  # which values get the extra draws when n is not a multiple
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


# The `data` keys the generator reads (conf/data/demo.yaml), all of which shape the corpus.
CONFIG_KEYS = (
    "size", "test_size", "seed", "accents", "variants", "test_variants", "test_fraction", "pitch_hz",
    "speed_wpm", "amplitude", "volume_dbfs", "peak_max",
)  # fmt: skip
# Every `data` key the generator reads: augmentation and other voices join the fingerprint only when they
# are on, so a corpus made before they existed stays current.
DATA_KEYS = (*CONFIG_KEYS, "augment", "other_voices")


def check_other_voices(cfg: dict | None, variants: dict[str, list[str]], accents: dict[str, str]) -> dict:
    """The `data.other_voices` settings, checked: `share` in [0, 1], each voice a flite voice with a known
    gender and accent. Raises ConfigError naming the key."""
    cfg = dict(cfg or {})
    share = cfg.get("share", 0.0)
    if not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"data.other_voices.share={share!r} must be in [0, 1]")
    voices = {name: dict(labels or {}) for name, labels in (cfg.get("voices") or {}).items()}
    if share and not voices:
        raise ConfigError("data.other_voices.share > 0 needs at least one of data.other_voices.voices")
    for name, labels in voices.items():
        if set(labels) != {"gender", "accent"}:
            raise ConfigError(f"data.other_voices.voices.{name}: give exactly gender and accent, got {sorted(labels)}")
        if labels.get("gender") not in variants or labels.get("accent") not in accents:
            raise ConfigError(
                f"data.other_voices.voices.{name}: needs a gender of {sorted(variants)} and an accent of "
                f"{sorted(accents)}, got {labels}"
            )
    return {"share": float(share), "voices": voices}


def plan_other_voices(plan: list[dict], cfg: dict, seed: int) -> None:
    """Give `share` of each gender's training clips to the other voices; sets each row's `synthesizer`
    (espeak-ng or flite), and `voice` and `variant` for the clips that change hands.

    The share is the same for every gender, so neither class is more "espeak" than the other. A clip goes to
    a voice of its gender and accent (drawn among them when several fit), so the plan's balance of every
    label stays as it was. Its own RNG: the corpus plan's other draws do not change with it.

    Raises:
        ConfigError: a gender's voices cover too few of its clips' accents for the share.
    """
    rng = random.Random(f"other_voices/{seed}")
    for row in plan:
        row["synthesizer"] = "espeak-ng"
    if not cfg["share"]:
        return
    for gender in sorted({row["gender"] for row in plan}):
        rows = [r for r in plan if r["split"] == "train" and r["gender"] == gender]
        fits = {
            accent: sorted(v for v, labels in cfg["voices"].items() if labels == {"gender": gender, "accent": accent})
            for accent in {r["accent"] for r in rows}
        }
        candidates = [r for r in rows if fits[r["accent"]]]
        wanted = round(cfg["share"] * len(rows))
        if wanted > len(candidates):
            accents = sorted(a for a, names in fits.items() if names)
            raise ConfigError(
                f"data.other_voices.share={cfg['share']}: {wanted} of {len(rows)} {gender} training clips, but the "
                f"other {gender} voices speak only {accents or 'no'} accents ({len(candidates)} clips); lower the "
                f"share or add voices"
            )
        for row in rng.sample(candidates, wanted):
            row.update(synthesizer="flite", voice=rng.choice(fits[row["accent"]]), variant="")


def generate_corpus(out_dir: str | os.PathLike, cfg: dict, workers: int | None = None) -> Path:
    """Write the demo corpus as an audiofolder, or do nothing when it is already there with this config.

    Args:
        out_dir: the corpus folder (`{data_dir}/{data.name}/corpus`).
        cfg: the `data` config: `size`, `test_size` (optional), `seed`, `accents`, `variants`,
            `test_variants`, `test_fraction`, `pitch_hz` (gender -> level -> Hz), `speed_wpm` (level -> -s),
            `amplitude` (the one -a), `volume_dbfs` (level -> active speech level after the gain), `peak_max`
            (largest peak).
        workers: espeak-ng processes run at once (None: one per CPU core). The clips do not depend on
            it: each is its own espeak-ng process and its own file.

    Returns:
        `out_dir` (with `wavs/` and `metadata.csv`).
    """
    out_dir = Path(out_dir)
    augmentation = check_augment(cfg.get("augment"))
    others = check_other_voices(cfg.get("other_voices"), cfg["variants"], cfg["accents"])
    fingerprint = {"plan_version": PLAN_VERSION, **{k: cfg.get(k) for k in CONFIG_KEYS}}
    if augmentation["share"]:  # a corpus made without augmentation keeps its fingerprint
        fingerprint["augment"] = augmentation
    if others["share"]:
        fingerprint["other_voices"] = others
    marker = out_dir / CORPUS_MARKER
    if corpus_is_current(out_dir, fingerprint):
        logger.info("demo corpus: up to date in %s", out_dir)
        return out_dir
    levels = {
        "pitch": sorted(next(iter(cfg["pitch_hz"].values()))),
        "speed": sorted(cfg["speed_wpm"]),
        "volume": sorted(cfg["volume_dbfs"]),
    }
    plan = plan_corpus(
        cfg["size"],
        cfg["seed"],
        cfg["accents"],
        cfg["variants"],
        cfg["test_variants"],
        cfg["test_fraction"],
        levels,
        test_size=cfg.get("test_size"),
    )
    plan_other_voices(plan, others, cfg["seed"])
    plan_augmentation(plan, augmentation, cfg["seed"])
    flite_used = sorted({row["voice"] for row in plan if row["synthesizer"] == "flite"})
    missing = sorted(set(flite_used) - flite_voices()) if flite_used else []
    if missing:
        raise ConfigError(f"data.other_voices.voices: flite has no voice {missing}; installed: {sorted(flite_voices())}")
    # Only now that the new config has a plan (a bad value raises above, the old corpus untouched):
    # a different config's wavs would not match their new labels.
    (out_dir / "metadata.csv").unlink(missing_ok=True)
    if marker.exists() and json.loads(marker.read_text()) != fingerprint:
        shutil.rmtree(out_dir / "wavs", ignore_errors=True)
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(fingerprint))

    gender_of = {v: g for g, vs in cfg["variants"].items() for v in vs}
    used = sorted({row["variant"] for row in plan if row["synthesizer"] == "espeak-ng"})
    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        calibrated = dict(
            zip(
                used, pool.map(lambda v: calibrate_pitch(v, cfg["pitch_hz"][gender_of[v]]), used), strict=True
            )
        )
        flite_settings = _calibrate_flite_voices(flite_used, others["voices"], cfg, pool)
    for row in plan:
        row["file_name"] = f"wavs/{row['clip_id']}.wav"
        if row["synthesizer"] == "flite":
            row["flite_f0_mean"] = flite_settings[row["voice"]]["f0_mean"][row["pitch"]]
            row["flite_duration_stretch"] = flite_settings[row["voice"]]["duration_stretch"][row["speed"]]
            continue
        row["espeak_pitch"] = calibrated[row["variant"]][row["pitch"]]
        row["espeak_speed"] = cfg["speed_wpm"][row["speed"]]
        row["espeak_amplitude"] = cfg["amplitude"]

    def synth(row: dict) -> None:
        final = out_dir / row["file_name"]  # rewritten even when there: its gain_db is needed
        raw = final.with_suffix(".raw.wav")
        if row["synthesizer"] == "flite":
            speak_flite(row["text"], raw, row["voice"], row["flite_f0_mean"], row["flite_duration_stretch"])
        else:
            speak(
                row["text"],
                raw,
                row["voice"],
                row["variant"],
                row["espeak_pitch"],
                row["espeak_speed"],
                row["espeak_amplitude"],
            )
        audio = load_audio(raw).array  # -> 16 kHz mono, so the corpus needs no conversion downstream
        gain = level_gain(audio, cfg["volume_dbfs"][row["volume"]], cfg["peak_max"])
        row["gain_db"] = round(20 * float(np.log10(gain)), 2)
        audio = (audio * gain).astype(np.float32)
        if row["augment"]:
            audio = augmented(audio, SAMPLE_RATE, json.loads(row["augment"]), cfg["peak_max"])
        tmp = final.with_suffix(".tmp.wav")
        write_audio(tmp, audio, SAMPLE_RATE, subtype="PCM_16")
        os.replace(tmp, final)
        raw.unlink()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(synth, plan))

    columns = [
        "clip_id",
        "file_name",
        "split",
        "text",
        "gender",
        "accent",
        "pitch",
        "speed",
        "volume",
        "synthesizer",
        "voice",
        "variant",
        "espeak_pitch",
        "espeak_speed",
        "espeak_amplitude",
        "flite_f0_mean",
        "flite_duration_stretch",
        "gain_db",
        "augment",
    ]
    tmp = out_dir / "metadata.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(plan)
    # metadata.csv appears last and atomically: its presence means every wav is written.
    os.replace(tmp, out_dir / "metadata.csv")
    logger.info(
        "demo corpus: %d clips (%d test) in %s", len(plan), sum(r["split"] == "test" for r in plan), out_dir
    )
    return out_dir
