"""The package installed like a library (a built wheel, not the checkout): its configs travel with it, the
console scripts run from any folder, and a user's own config folder adds presets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The checkout built and installed (not editable) into a folder of its own; no network."""
    site = tmp_path_factory.mktemp("site")
    # Built from a copy: a local build writes build/ and *.egg-info beside the sources.
    source = tmp_path_factory.mktemp("src") / "speechllm"
    top = {".git", ".venv", "data", "runs", "outputs", "multirun", "build", ".pytest_cache", ".ruff_cache"}

    def skip(folder: str, names: list[str]) -> set[str]:  # the checkout's work folders, at its top only
        here = top if Path(folder) == REPO else set()
        return {n for n in names if n in here or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, source, symlinks=True, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return site


def _run(installed: Path, script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(installed / "bin" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_wheel_carries_the_configs_and_scripts(installed):
    package = installed / "speechllm"
    assert (package / "conf" / "train.yaml").is_file()
    assert (package / "conf" / "experiment" / "demo.yaml").is_file()
    assert (package / "conf" / "attributes" / "gender.yaml").is_file()
    for script in ("speechllm-prepare", "speechllm-train", "speechllm-evaluate", "speechllm-ask"):
        assert (installed / "bin" / script).is_file()


def test_console_scripts_train_and_ask_from_another_folder_with_a_user_preset(installed, tmp_path):
    # A user's own config folder: a preset of theirs on top of the package's smoke preset.
    mine = tmp_path / "myconf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - smoke\ntrainer:\n  max_steps: 1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    train = _run(
        installed, "speechllm-train", "--config-dir", str(tmp_path / "myconf"), "experiment=mine",
        f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}", "hydra.run.dir=run",
        "trainer.report_to=[]", cwd=elsewhere,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    final = elsewhere / "run" / "checkpoints" / "final"
    assert (final / "config.json").is_file() and (elsewhere / "run" / "train.log").is_file()
    assert "max_steps: 1" in (elsewhere / "run" / ".hydra" / "config.yaml").read_text()  # the user's preset
    # The scripts ran the installed package, not the checkout.
    where = subprocess.run(
        [sys.executable, "-c", "import speechllm; print(speechllm.__file__)"], cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(installed))

    clip = elsewhere / "clip.wav"
    t = np.arange(16000) / 16000
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    ask = _run(
        installed, "speechllm-ask", str(final), str(clip), "Is the speaker a man or a woman?", cwd=elsewhere
    )
    assert ask.returncode == 0, ask.stderr[-3000:]
    assert ask.stdout.endswith("\n")  # one answer line (a tiny random LLM's answer may be empty)


def test_unknown_command_says_which_exist():
    proc = subprocess.run([sys.executable, "-m", "speechllm.cli", "fly"], capture_output=True, text=True)
    assert proc.returncode != 0 and "prepare|train|evaluate" in proc.stderr


BRIGHTNESS_EXTRACTOR = """
import numpy as np

from speechllm.describe.features import to_bin
from speechllm.describe.registry import register_attribute


@register_attribute("brightness", keys=("edges",))
def brightness(clips, cfg):
    out = []
    for clip in clips:
        spec = np.abs(np.fft.rfft(clip.audio))
        hz = float((spec * np.fft.rfftfreq(len(clip.audio), 1 / clip.sr)).sum() / spec.sum())
        out.append({"brightness": to_bin(hz, cfg["edges"], cfg["words"]), "brightness_hz": round(hz, 1)})
    return out
"""

BRIGHTNESS_YAML = """\
edges: [1000]
words: [dark, bright]
render:
  tag: Timbre
  natural: {slot: manner, phrases: {dark: in a dark voice, bright: in a bright voice}}
task:
  clause: "The voice sounds {v}."
  keywords: [bright, brightness, timbre]
  questions: ["Would you call this voice {options}?"]
  training_questions: ["How bright is the voice?", "Is the timbre dark or bright?"]
  synonyms: {bright: [brilliant], dark: [dull]}
"""


def test_a_users_own_attribute_runs_through_prepare_train_and_evaluate(installed, tmp_path):
    """An attribute added without touching the package: the extractor in the user's own module
    (`describe.modules`), its YAML in their --config-dir's attributes/. Prepare asks its training questions,
    training reads those targets, and the evaluation has a task for it."""
    mods, conf, folder, data = tmp_path / "mymods", tmp_path / "myconf", tmp_path / "clips", tmp_path / "data"
    mods.mkdir()
    (mods / "brightness_ext.py").write_text(BRIGHTNESS_EXTRACTOR)
    (conf / "attributes").mkdir(parents=True)
    (conf / "attributes" / "brightness.yaml").write_text(BRIGHTNESS_YAML)
    folder.mkdir()
    t = np.arange(16000) / 16000
    lines = ["file_name,split,brightness,text"]
    for i in range(10):
        hz, word = (300, "dark") if i % 2 else (3000, "bright")
        sf.write(folder / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16000)
        lines.append(f"c{i}.wav,{'test' if i >= 8 else 'train'},{word},hello there")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    env_path = f"{installed}{os.pathsep}{mods}"
    common = ["--config-dir", str(conf), f"paths.data_dir={data}", f"paths.cache_dir={tmp_path / 'cache'}"]
    data_args = ["data=audiofolder", f"data.path={folder}", "data.name=bright"]
    # The `attributes` pool, on clips described with the words and brightness only: its 2 brightness and 2
    # content questions, none about gender, accent, pitch...
    target_args = ["target=label", "target.instructions=attributes", "target.instructions_per_clip=4"]

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": env_path, "HF_HUB_OFFLINE": "1"}
        return subprocess.run([str(installed / "bin" / script), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    prepare = run("speechllm-prepare", *common, *data_args, *target_args, "target.llm=tiny:llm", "stages=[corpus,describe,targets]",
                  "describe.attributes=[transcript,brightness]", "+describe.overrides.transcript.methods=[label]",
                  "describe.modules=[brightness_ext]", "hydra.run.dir=prep")  # fmt: skip
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    import datasets

    described = datasets.load_from_disk(str(data / "bright" / "described"))
    assert [r["brightness"] for r in described] == [r["label_brightness"] for r in described]
    targets = list(datasets.load_from_disk(str(data / "bright" / "targets" / "label")))
    brightness_rows = [
        r
        for r in targets
        if r["instruction"] in ("How bright is the voice?", "Is the timbre dark or bright?")
    ]
    assert brightness_rows and all(
        r["target"] in ("The voice sounds dark.", "The voice sounds bright.") for r in brightness_rows
    )
    from speechllm.data.instructions import CONTENT_QUESTIONS

    assert all(r in brightness_rows or r["instruction"] in CONTENT_QUESTIONS for r in targets)

    train = run("speechllm-train", *common, "experiment=smoke", *data_args, *target_args, "trainer.max_steps=1", "prepare_missing=false",
                "trainer.report_to=[]", "hydra.run.dir=run")  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]

    evaluate = run("speechllm-evaluate", *common, f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'final'}",
                   "eval.data=bright", "eval.tasks=[brightness]", "eval.max_clips=null", "eval.baseline=false",
                   "eval.ceiling=false", "eval.retention.format=false", "eval.plots=false",
                   "describe.modules=[brightness_ext]", "hydra.run.dir=eval")  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert list(report["unseen"]) == ["brightness"] and report["unseen"]["brightness"]["n"] == 2

    # A module that is not there is one line naming the key.
    missing = run("speechllm-prepare", *common, *data_args, "stages=[corpus,describe]",
                  "describe.modules=[no_such_module]", "hydra.run.dir=prep2")  # fmt: skip
    assert missing.returncode == 2
    assert "describe.modules: No module named 'no_such_module'" in missing.stderr
