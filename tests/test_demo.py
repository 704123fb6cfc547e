"""The `make demo` pipeline's reuse rule: a step is redone when its command, code or configs change."""

import json
import os

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
