"""The package installed like a library (a built wheel, not the checkout): its configs travel with it, the
console scripts run from any folder, and a user's own config folder adds presets."""

from __future__ import annotations

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
    assert (package / "conf" / "experiment" / "default.yaml").is_file()
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
