"""Every config group is checked against one dataclass schema, and the schema's defaults are the YAML's."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from speechllm.config import ConfigError, flatten
from speechllm.data.describe_stage import DescribeConfig
from speechllm.data.replay import ReplayConfig
from speechllm.data.targets import TargetConfig
from speechllm.eval.runner import EvalSettings, evaluate
from speechllm.model.prompt import PromptConfig
from speechllm.train.config import AlignConfig, KDConfig, ProbeConfig, TrainerConfig

CONF = Path(__file__).resolve().parent.parent / "speechllm" / "conf"


def _defaults(schema) -> dict:
    values = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            values[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return flatten(values)


@pytest.mark.parametrize(
    "schema, yaml_file, section",
    [
        (TrainerConfig, "trainer/default.yaml", None),
        (TargetConfig, "target/self_output.yaml", None),
        (ReplayConfig, "replay/default.yaml", None),
        (KDConfig, "train.yaml", "kd"),
        (AlignConfig, "train.yaml", "align"),
        (ProbeConfig, "train.yaml", "probe"),
        (PromptConfig, "model/default.yaml", "prompt"),
        (DescribeConfig, "describe/default.yaml", None),
        (EvalSettings, "eval/default.yaml", None),
    ],
)
def test_schema_defaults_are_the_yaml_defaults(schema, yaml_file, section):
    node = yaml.safe_load((CONF / yaml_file).read_text())
    node = node[section] if section else {k: v for k, v in node.items() if k != "defaults"}
    in_yaml, in_code = flatten(node), _defaults(schema)
    assert set(in_yaml) <= set(in_code), f"keys the schema lacks: {set(in_yaml) - set(in_code)}"
    differ = {k: (in_code[k], v) for k, v in in_yaml.items() if in_code[k] != v}
    assert differ == {}, "(code, yaml) defaults disagree"


@pytest.mark.parametrize(
    "override, says",
    [
        ("+eval.max_clip=3", "unknown config key 'eval.max_clip'"),
        ("+eval.retention.formats=false", "unknown config key 'eval.retention.formats'"),
        ("eval.tasks=[gendre]", "unknown eval task(s) ['gendre']"),
        ("+describe.renderr=x", "unknown config key 'describe.renderr'"),
    ],
)
def test_an_eval_config_typo_fails_before_the_checkpoint_loads(tmp_path, override, says):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"checkpoint={tmp_path / 'none'}", override])
    with pytest.raises(ConfigError) as err:  # not CheckpointError: the checkpoint does not exist
        evaluate(cfg, out_dir=str(tmp_path))
    assert says in str(err.value)
