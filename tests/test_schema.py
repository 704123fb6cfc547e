"""Every config group is checked against one dataclass schema, and the schema's defaults are the YAML's."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from speechllm.config import ConfigError, flatten
from speechllm.data.describe_stage import DescribeConfig
from speechllm.data.replay import ReplayConfig
from speechllm.data.targets import TargetConfig
from speechllm.eval.runner import EvalSettings, evaluate
from speechllm.model.adapters import ConvAdapter, QFormerAdapter, StackMLPAdapter
from speechllm.model.prompt import PromptConfig
from speechllm.model.speechlm import EncoderConfig, LLMConfig
from speechllm.train.config import (
    PATHS_KEYS,
    AlignConfig,
    KDConfig,
    ProbeConfig,
    TopLevelConfig,
    TrainerConfig,
)
from speechllm.train.onpolicy import GRPOConfig, OPDConfig

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


def _yaml_node(yaml_file: str, section: str | None) -> dict:
    node = yaml.safe_load((CONF / yaml_file).read_text())
    return node[section] if section else {k: v for k, v in node.items() if k not in ("defaults", "hydra")}


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "seed")  # of speechllm.textllm.GenerationConfig

# The top level of train.yaml beside its groups and the sections with schemas of their own; `target` and
# `replay` there only point the writers at the trained LLM (interpolations).
TRAIN_TOP_SECTIONS = ("kd", "opd", "grpo", "align", "probe")


@pytest.mark.parametrize(
    "schema, yaml_file, section",
    [
        (TrainerConfig, "trainer/default.yaml", None),
        (TargetConfig, "target/self_output.yaml", None),
        (ReplayConfig, "replay/default.yaml", None),
        (KDConfig, "train.yaml", "kd"),
        (OPDConfig, "train.yaml", "opd"),
        (GRPOConfig, "train.yaml", "grpo"),
        (AlignConfig, "train.yaml", "align"),
        (ProbeConfig, "train.yaml", "probe"),
        (PromptConfig, "model/default.yaml", "prompt"),
        (EncoderConfig, "model/encoder/whisper_tiny_en.yaml", None),  # model/default.yaml's encoder
        (LLMConfig, "model/llm/smollm2_135m.yaml", None),  # and its LLM
        (DescribeConfig, "describe/default.yaml", None),
        (EvalSettings, "eval/default.yaml", None),
    ],
)
def test_schema_and_yaml_have_the_same_keys_and_defaults(schema, yaml_file, section):
    in_yaml, in_code = flatten(_yaml_node(yaml_file, section)), _defaults(schema)
    # A greedy generation section leaves out the sampling keys: nothing reads them.
    greedy = {k.rsplit(".", 1)[0] for k, v in in_yaml.items() if k.endswith("do_sample") and v is False}
    unread = {f"{g}.{key}" for g in greedy for key in SAMPLING_KEYS}
    in_code = {k: v for k, v in in_code.items() if k not in unread or k in in_yaml}
    assert set(in_yaml) == set(in_code), (
        f"keys only in the YAML: {set(in_yaml) - set(in_code)}; only in the schema: {set(in_code) - set(in_yaml)}"
    )
    differ = {k: (in_code[k], v) for k, v in in_yaml.items() if in_code[k] != v}
    assert differ == {}, "(code, yaml) defaults disagree"


def test_train_yaml_top_level_is_the_top_level_schema():
    node = _yaml_node("train.yaml", None)
    plain = {k: v for k, v in node.items() if k not in ("target", "replay") and k not in TRAIN_TOP_SECTIONS}
    in_code = {
        k: v for k, v in _defaults(TopLevelConfig).items() if k.split(".")[0] not in TRAIN_TOP_SECTIONS
    }
    assert plain == in_code
    assert set(_yaml_node("paths/default.yaml", None)) == set(PATHS_KEYS)


# Adapters are built from code as well as from YAML, and checkpoints saved before `output_norm` existed
# must still build without it: so the constructors default it to False while every YAML turns it on.
ADAPTER_CODE_ONLY_DEFAULTS = {"output_norm": False}


@pytest.mark.parametrize(
    "cls, yaml_file",
    [(QFormerAdapter, "qformer.yaml"), (StackMLPAdapter, "stack_mlp.yaml"), (ConvAdapter, "conv.yaml")],
)
def test_adapter_yaml_sets_every_hyper_parameter_at_its_constructor_default(cls, yaml_file):
    node = _yaml_node(f"model/adapter/{yaml_file}", None)
    assert node.pop("_target_") == f"{cls.__module__}.{cls.__name__}"
    widths = {"in_dim", "out_dim", "num_taps", "embed_rms"}  # given at run time from the loaded models
    params = {n: p.default for n, p in inspect.signature(cls).parameters.items() if n not in widths}
    assert set(node) == set(params)
    differ = {
        k: (params[k], v) for k, v in node.items() if params[k] != v and k not in ADAPTER_CODE_ONLY_DEFAULTS
    }
    assert differ == {}, "(code, yaml) defaults disagree"
    assert {k: params[k] for k in ADAPTER_CODE_ONLY_DEFAULTS} == ADAPTER_CODE_ONLY_DEFAULTS


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
