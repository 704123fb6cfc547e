"""The `make demo` pipeline's reuse rule: a step is redone when its command, code or configs change."""

import json
import os
from pathlib import Path

from speechllm import steps


def _tree(root):
    for rel, text in {"speechllm/conf/experiment/demo.yaml": "lr: 1", "speechllm/model/a.py": "x = 1",
                      "speechllm/eval/parsing.py": "y = 1", "train.py": "", "evaluate.py": ""}.items():  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_steps_are_redone_when_code_or_configs_change(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "REPO", tmp_path)
    _tree(tmp_path)
    train_skip = ("speechllm/eval/", "evaluate.py")
    record = {"command": ["train.py"], "sources": steps.sources_digest(skip=train_skip)}
    out = tmp_path / "runs" / "final"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "demo_command.json").write_text(json.dumps(record))
    assert steps.is_fresh(out / "config.json", 0.0, record)

    # An evaluation-only change keeps the checkpoint; a preset change does not.
    (tmp_path / "speechllm/eval/parsing.py").write_text("y = 2")
    assert steps.sources_digest(skip=train_skip) == record["sources"]
    (tmp_path / "speechllm/conf/experiment/demo.yaml").write_text("lr: 2")
    now = {"command": ["train.py"], "sources": steps.sources_digest(skip=train_skip)}
    assert not steps.is_fresh(out / "config.json", 0.0, now)
    # Newer inputs than the output, or another command, also mean redo.
    assert not steps.is_fresh(out / "config.json", os.path.getmtime(out / "config.json") + 1, record)
    assert not steps.is_fresh(out / "config.json", 0.0, {**record, "command": ["train.py", "seed=1"]})


def test_demo_prepares_the_targets_the_default_experiment_trains_on():
    from omegaconf import OmegaConf

    preset = OmegaConf.load(steps.REPO / "conf" / "experiment" / "demo.yaml")
    command = steps.prepare_command_for("/tmp/d", ["target.generation.seed=3", "trainer.num_train_epochs=1"])
    assert command[1] == "data_prep/prepare.py" and "paths.data_dir=/tmp/d" in command
    assert f"target.instructions={preset.target.instructions}" in command
    assert "target.generation.seed=3" in command and not any(c.startswith("trainer.") for c in command)


def test_the_printed_real_voices_command_is_valid():
    # The demo prints it instead of running it; a renamed eval key must fail here, not in a user's shell.
    import shlex

    from hydra import compose, initialize_config_dir

    from speechllm.config import CONF_DIR
    from speechllm.demo import real_voices_command

    build, evaluate = real_voices_command(Path("/runs/demo/final"), "/data").split(" && ")
    assert shlex.split(build)[:3] == ["python", "-m", "speechllm.eval.real_voices"]
    words = shlex.split(evaluate)
    assert words[:2] == ["python", "evaluate.py"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=words[2:])
    assert cfg.eval.audiofolder == "/data/real_voices" and list(cfg.eval.tasks) == ["gender"]
