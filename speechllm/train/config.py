"""The training config's schema and the checks that run before any model is loaded.

Hydra already refuses command-line overrides of keys that do not exist and group options that do not
exist. What it cannot see is a typo inside a YAML file (an experiment preset that sets
`trainer.lerning_rate` silently adds a key nobody reads) or a value out of range. The dataclasses
below are the schema for the most-edited parts (the top-level keys, `trainer`, `kd`, the replay
mixture); :func:`validate_schema` merges the composed config into them so an unknown key or a wrong type
fails with the key's dotted name, and each dataclass's `check()` names a value out of range. Whether the
prepared data is there and current is `speechllm.data.prepared`'s question.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers.trainer_utils import SchedulerType

from speechllm.attributes import use_user_attribute_dirs
from speechllm.config import ConfigError, check_section, check_targets
from speechllm.data.prepare import check_data_config
from speechllm.data.replay import replay_config
from speechllm.data.targets import target_config
from speechllm.model.speechlm import check_model_config
from speechllm.train.onpolicy import GRPOConfig, OPDConfig

logger = logging.getLogger(__name__)

LOSSES = ("ce", "kd", "opd", "grpo")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainerConfig:
    """`trainer` group: how the optimisation runs (mapped onto `transformers.TrainingArguments`).

    Attributes:
        max_steps: optimiser steps to run; -1 runs `num_train_epochs` epochs.
        num_train_epochs: epochs over the mixture when `max_steps` is -1.
        per_device_train_batch_size: rows per device per micro-batch.
        gradient_accumulation_steps: micro-batches per optimiser step.
        learning_rate: peak learning rate.
        adapter_learning_rate: the adapter's own peak learning rate (None: `learning_rate`; 0 freezes it).
            After an alignment warm-up the adapter already writes each clip's description; at the
            reader's learning rate the cross-entropy steps can overwrite what it wrote.
        lr_scheduler_type: a `transformers` schedule name (cosine, linear, constant_with_warmup, ...).
        warmup_steps: linear warm-up: a share of the steps when below 1 (0.05), else a step count
            (as `TrainingArguments.warmup_steps`).
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping norm (0 disables clipping).
        precision: auto (bf16 on a GPU that has it, else fp32), bf16, fp16 or fp32.
        logging_steps: log the loss every this many steps.
        save_steps: write `checkpoints/step-N/` every this many steps (0: only `final`).
        save_total_limit: keep at most this many step checkpoints (None keeps all).
        group_by_length: batch rows of similar length together, so padding stays small.
        cache_encoder_features: with a frozen encoder, encode each clip once and reuse the features.
        feature_cache_dir: where cached features live; None uses `<data_dir>/<data.name>/features`.
        dataloader_num_workers: data-loading worker processes.
        gradient_checkpointing: trade compute for memory in the LLM.
        resume: None (start fresh), "last" (newest `checkpoints/step-N/` in this run dir) or a
            checkpoint folder path.
        report_to: logging integrations (tensorboard; [] for none).
        extra_args: further `TrainingArguments` fields passed through verbatim (fsdp, deepspeed,
            ddp_timeout, ...); names are checked against `TrainingArguments`.
    """

    max_steps: int = -1
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    adapter_learning_rate: float | None = None
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"
    logging_steps: int = 1
    save_steps: int = 200
    save_total_limit: int | None = 3
    group_by_length: bool = True
    cache_encoder_features: bool = True
    feature_cache_dir: str | None = None
    dataloader_num_workers: int = 0
    gradient_checkpointing: bool = False
    resume: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    extra_args: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ConfigError naming the first key out of range."""
        if self.adapter_learning_rate is not None and self.adapter_learning_rate < 0:
            raise ConfigError(
                f"trainer.adapter_learning_rate={self.adapter_learning_rate} must be >= 0 (0 freezes the adapter), "
                "or null for trainer.learning_rate"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision={self.precision!r} is not one of {list(PRECISIONS)}")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"trainer.max_steps must be -1 (use epochs) or >= 1, got {self.max_steps}")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ConfigError(f"trainer.num_train_epochs must be > 0, got {self.num_train_epochs}")
        if self.warmup_steps < 0 or (self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps)):
            raise ConfigError(
                f"trainer.warmup_steps must be a share in [0, 1) or a whole number of steps, got {self.warmup_steps}"
            )
        if self.save_steps < 0:
            raise ConfigError(f"trainer.save_steps must be >= 0, got {self.save_steps}")
        if self.learning_rate <= 0:
            raise ConfigError(f"trainer.learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"trainer.max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if self.weight_decay < 0:
            raise ConfigError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(
                f"trainer.save_total_limit must be >= 1, or null to keep every checkpoint; got {self.save_total_limit}"
            )
        schedulers = [t.value for t in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ConfigError(f"trainer.lr_scheduler_type={self.lr_scheduler_type!r} is not one of {schedulers}")
        _check_extra_args(self.extra_args)


@dataclass
class KDConfig:
    """`kd`: distillation from the frozen LLM reading the description (used when `loss=kd`).

    Attributes:
        temperature: softmax temperature for both distributions (the KL is scaled by T^2).
        ce_weight: weight of cross-entropy on the target tokens added to the KL (0: pure KL).
    """

    temperature: float = 1.0
    ce_weight: float = 0.0

    def check(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"kd.temperature must be > 0, got {self.temperature}")


@dataclass
class AlignConfig:
    """`align`: pull the audio embeddings toward the token embeddings of each clip's description
    (see `speechllm.train.align`).

    Attributes:
        weight: alignment loss added to the training loss (0: off during training).
        pretrain_steps: alignment-only adapter steps before training (no LLM pass; 0: none).
        pretrain_batch_size: clips per warm-up step.
        pretrain_learning_rate: warm-up learning rate (AdamW, constant).
        pretrain_clips: the warm-up's clips: `targets` (the clips with training targets) or `described`
            (every described clip of the training split: alignment needs only a description, so clips
            the LLM never answered for count too, and many more clips are cheap).
        renderer: how the text is written (`speechllm.describe.render`: natural | sentences | desta2).
        attributes: the attributes it mentions, in order.
        filler: text whose token fills the audio slots past the description.
        reuse: store the warm-up's adapter under `<paths.cache_dir>/align-warmup/` keyed by everything it
            depends on, and load it instead of warming up again (runs that differ only after the warm-up,
            such as the variants of a study, share one).
    """

    weight: float = 0.0
    pretrain_steps: int = 0
    pretrain_batch_size: int = 16
    pretrain_learning_rate: float = 1e-3
    pretrain_clips: str = "targets"
    renderer: str = "natural"
    attributes: list[str] = field(
        default_factory=lambda: ["gender", "accent", "pitch", "speaking_rate", "volume"]
    )
    filler: str = "\n"
    reuse: bool = True

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or self.pretrain_steps > 0

    def check(self) -> None:
        if self.weight < 0 or self.pretrain_steps < 0:
            raise ConfigError("align.weight and align.pretrain_steps must be >= 0")
        if self.pretrain_batch_size < 1 or self.pretrain_learning_rate <= 0:
            raise ConfigError("align.pretrain_batch_size must be >= 1 and align.pretrain_learning_rate > 0")
        if self.pretrain_clips not in ("targets", "described"):
            raise ConfigError(f"align.pretrain_clips={self.pretrain_clips!r}: choose targets or described")


@dataclass
class ProbeConfig:
    """`probe`: the listening probe run during training (see `speechllm.eval.probe`).

    Attributes:
        every: probe every this many optimiser steps, and before the first (0: off).
        split: the described split whose clips are probed (held out from training).
        max_clips: clips probed (a seeded draw; None: all).
        questions_per_task: unseen phrasings per clip and task.
        tasks: attribute tasks (None: every labelled one).
        batch_size: rows per forward pass.
    """

    every: int = 0
    split: str = "test"
    max_clips: int | None = 24
    questions_per_task: int = 1
    tasks: list[str] | None = None
    batch_size: int = 32

    def check(self) -> None:
        if self.every < 0 or self.questions_per_task < 1 or self.batch_size < 1:
            raise ConfigError("probe.every must be >= 0, probe.questions_per_task and probe.batch_size >= 1")


@dataclass(frozen=True)
class MixtureConfig:
    """What training reads of the `replay` group, taken from its one schema (`data.replay.ReplayConfig`,
    which also checks the values); the rest of the group configures data preparation.

    Attributes:
        ratio: share of the training rows that are text replay, in [0, 1).
        weights: replay dataset name (a folder `<data_dir>/replay/<name>/`) -> relative weight.
        build: the replay datasets data preparation builds (`replay.build`); a weighted source that is
            not built is left out of the mixture (with a log line), so default weights can name sources
            a config does not build.
    """

    ratio: float
    weights: dict[str, float]
    build: list[str]

    def sources(self) -> dict[str, float]:
        """Replay datasets the mixture draws from: weight > 0 and built by data preparation."""
        if self.ratio <= 0:
            return {}
        return {k: w for k, w in self.weights.items() if w > 0 and k in self.build}

    def check(self) -> None:
        """A replay share needs a source to draw from; weighted sources left unbuilt are only logged."""
        if self.ratio > 0 and not self.sources():
            raise ConfigError(
                f"replay.ratio={self.ratio} > 0 but no replay source has a weight > 0 in replay.weights "
                f"{dict(self.weights)} and is built (replay.build={self.build})"
            )
        skipped = [k for k, w in self.weights.items() if w > 0 and k not in self.sources()]
        if self.ratio > 0 and skipped:
            logger.info("replay sources %s have weights but are not in replay.build: left out of the mixture", skipped)


@dataclass
class TopLevelConfig:
    """Top-level keys of `conf/train.yaml` that are not config groups.

    Attributes:
        seed: seeds model init, the mixture and the data order.
        loss: ce (cross-entropy on target tokens, DeSTA2), kd (KL to the LLM reading the description), opd
            (on-policy distillation) or grpo (RL with label-checked rewards); speechllm.train.onpolicy.
        kd: distillation settings.
        opd: on-policy distillation settings.
        grpo: GRPO settings.
        prepare_missing: run `data_prep/prepare.py` when the prepared data is missing, instead of failing.
        prepare_args: extra `data_prep/prepare.py` overrides that make this run's data (presets use it
            for settings only data preparation reads, e.g. the corpus size).
        train_split: which `split` value of the target rows to train on.
        max_train_rows: cap on speech rows (None: all), for quick runs.
        torch_threads: CPU threads for torch (None: torch's default). Tiny models run fastest on one
            thread; several threads on a busy machine mostly wait for each other.
        task_kl_rows: after training, KL(base reading the description || trained model hearing the audio) per
            answer token on this many training rows (0: off), into train_metrics.json's `task_kl`.
        align: the alignment loss and warm-up.
        probe: the listening probe (learning curve).
    """

    seed: int = 0
    loss: str = "ce"
    kd: KDConfig = field(default_factory=KDConfig)
    opd: OPDConfig = field(default_factory=OPDConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    prepare_missing: bool = False
    prepare_args: list[str] = field(default_factory=list)
    train_split: str = "train"
    max_train_rows: int | None = None
    torch_threads: int | None = None
    task_kl_rows: int = 0
    align: AlignConfig = field(default_factory=AlignConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r} is not one of {list(LOSSES)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1 or null, got {self.torch_threads}")
        if self.task_kl_rows < 0:
            raise ConfigError(f"task_kl_rows must be >= 0, got {self.task_kl_rows}")
        if self.max_train_rows is not None and self.max_train_rows < 1:
            raise ConfigError(f"max_train_rows must be >= 1 or null, got {self.max_train_rows}")
        self.kd.check()
        self.opd.check()
        self.grpo.check()
        self.align.check()
        self.probe.check()


# Config groups composed by conf/train.yaml; each owner validates its own node's contents.
GROUP_KEYS = ("paths", "data", "model", "target", "replay", "trainer", "hydra")


def validate_schema(cfg: DictConfig) -> tuple[TopLevelConfig, TrainerConfig, MixtureConfig]:
    """Check the top-level keys, `trainer`, `kd` and the replay mixture against the schema.

    Args:
        cfg: the composed training config.

    Returns:
        (top-level settings, trainer settings, mixture settings) as plain dataclasses.

    Raises:
        ConfigError: naming the offending key (unknown key, wrong type, value out of range).
    """
    top_names = {f.name for f in dataclasses.fields(TopLevelConfig)}
    unknown = [k for k in cfg.keys() if k not in top_names and k not in GROUP_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown config key '{unknown[0]}'. Top-level keys: {sorted(top_names)}; "
            f"groups: {sorted(GROUP_KEYS)}"
        )
    top = check_section(TopLevelConfig, {k: cfg[k] for k in cfg.keys() if k in top_names}, "")
    trainer = check_section(TrainerConfig, cfg.get("trainer", {}), "trainer.")
    use_user_attribute_dirs()  # the `attributes` instruction pool asks about the user's attributes too
    replay = _check_owner_schemas(cfg).get("replay") or replay_config(None)
    mixture = MixtureConfig(ratio=replay.ratio, weights=dict(replay.weights), build=list(replay.build))

    for settings in (top, trainer, mixture):
        settings.check()
    finetune = OmegaConf.select(cfg, "model.llm.finetune", default=None)
    if top.loss in ("kd", "opd") and finetune == "full":
        raise ConfigError(f"loss={top.loss} needs the original LLM as teacher: use model.llm.finetune=frozen or lora")
    if top.loss == "grpo" and top.grpo.kl_weight and finetune != "lora":
        raise ConfigError("grpo.kl_weight > 0 needs the reference policy, the model without its LoRA: use "
                          "model.llm.finetune=lora (or grpo.kl_weight=0)")  # fmt: skip
    # Every `_target_` a run could instantiate (Hydra's own node configures Hydra, not the run).
    for key in cfg.keys():
        if key != "hydra":
            check_targets(OmegaConf.create({key: cfg[key]}))
    return top, trainer, mixture


PATHS_KEYS = ("data_dir", "cache_dir", "output_dir")


def _check_owner_schemas(cfg: DictConfig) -> dict[str, Any]:
    """Validate `paths`, and `data`, `model`, `target` and `replay` with their owners' checks (typos fail here
    too); returns what each check returned, by group."""
    unknown = [k for k in (cfg.get("paths") or {}).keys() if k not in PATHS_KEYS]
    if unknown:
        raise ConfigError(f"unknown config key 'paths.{unknown[0]}'. Known keys of paths: {list(PATHS_KEYS)}")
    checks = (("data", check_data_config), ("model", check_model_config), ("target", target_config),
              ("replay", replay_config))  # fmt: skip
    checked = {}
    for key, check in checks:
        if key in cfg:
            try:
                checked[key] = check(cfg[key])
            except ValueError as e:
                raise ConfigError(f"{key}: {e}" if key in ("target", "replay") else str(e)) from None
    return checked


def _check_extra_args(extra: dict[str, Any]) -> None:
    """`trainer.extra_args` keys must be `TrainingArguments` fields that the schema does not own."""
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    owned = {f.name for f in dataclasses.fields(TrainerConfig)} | {
        "output_dir", "seed", "data_seed", "bf16", "fp16", "remove_unused_columns", "save_strategy",
        "length_column_name", "train_sampling_strategy",
    }  # fmt: skip
    for key in extra:
        if key not in known:
            raise ConfigError(f"unknown config key 'trainer.extra_args.{key}': not a TrainingArguments field")
        if key in owned:
            raise ConfigError(
                f"trainer.extra_args.{key} is set by the training code or has its own key; "
                f"set trainer.{key} (or the top-level key) instead"
            )
