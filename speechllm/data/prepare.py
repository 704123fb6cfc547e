"""Data preparation: the stages `data_prep/prepare.py` runs, in order.

`STAGES` is the pipeline: each entry is `(name, function(cfg, state))`. A stage reads what earlier
ones left in `state` and adds its own output; each is resumable and skips itself when current, so
`prepare(cfg)` can always be rerun. A config mistake raises `ConfigError`, which the entry point
reports in one line.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from speechllm.attributes import attribute_tasks
from speechllm.config import ConfigError
from speechllm.corpus import espeak, generate_corpus, hf, read_audiofolder
from speechllm.corpus.hf import write_hf_corpus
from speechllm.data import layout
from speechllm.data.describe_stage import describe_config, run_describe
from speechllm.data.lock import preparing
from speechllm.data.replay import replay_config, run_replay
from speechllm.data.stage import parse_shard, read_rejects
from speechllm.data.targets import run_targets, target_config
from speechllm.digests import key_digest

logger = logging.getLogger(__name__)

Stage = Callable[[DictConfig, dict[str, Any]], None]


def data_root(cfg: DictConfig) -> Path:
    """`{paths.data_dir}/{data.name}`: where this dataset's stages write."""
    return layout.dataset_dir(cfg.paths.data_dir, cfg.data.name)


def check_data_config(data: DictConfig | dict) -> None:
    """Refuse unknown `data` keys by name (a typo would otherwise be ignored).

    Every data config has `name`, `generate` and `path`; `generate: espeak` or `hf` adds its keys.

    Raises:
        ConfigError: a key the chosen corpus does not read, or an unknown generator.
    """
    generator = data.get("generate")
    generators = {None: (), "espeak": espeak.DATA_KEYS, "hf": hf.CONFIG_KEYS}
    if generator not in generators:
        raise ConfigError(
            f"data.generate={generator!r}: use espeak (the demo corpus), hf (a datasets dataset) or null"
        )
    known = ("name", "generate", "path", *generators[generator])
    unknown = [k for k in data.keys() if k not in known]
    if unknown:
        raise ConfigError(f"unknown config key 'data.{unknown[0]}'. Known keys of data: {list(known)}")


def corpus_stage(cfg: DictConfig, state: dict[str, Any]) -> None:
    """Generate the corpus when the data config asks for it (`data.generate: espeak`), or write a `datasets`
    dataset out as one (`hf`); read its rows."""
    path = Path(cfg.data.path)
    if cfg.data.get("generate") == "espeak":
        generate_corpus(path, OmegaConf.to_container(cfg.data, resolve=True))
    elif (
        cfg.data.get("generate") == "hf"
    ):  # `path` is the dataset; its audiofolder copy goes beside the stages
        path = write_hf_corpus(
            layout.corpus_dir(cfg.paths.data_dir, cfg.data.name),
            OmegaConf.to_container(cfg.data, resolve=True),
        )
    state["corpus_dir"] = path
    state["inputs"] = read_audiofolder(path)
    # A split other than train/test is kept (train.py's train_split can name it) but said, since a typo there
    # takes clips out of both the training and the test split.
    splits = Counter(row["split"] for row in state["inputs"])
    logger.info(
        "corpus: %d clips listed in %s (split %s)", len(state["inputs"]), path / "metadata.csv",
        ", ".join(f"{name} {count}" for name, count in sorted(splits.items())),
    )  # fmt: skip


def describe_stage(cfg: DictConfig, state: dict[str, Any]) -> None:
    """Describe every clip into `{data_root}/described` (rejects beside it)."""
    out_dir = layout.described_dir(cfg.paths.data_dir, cfg.data.name)
    describe_cfg = OmegaConf.to_container(cfg.describe, resolve=True)
    state["described"] = run_describe(
        state["inputs"], out_dir, describe_cfg, num_proc=cfg.get("num_proc", 1), shard=cfg.get("shard", "0/1")
    )
    state["described_dir"] = out_dir


STAGES: list[tuple[str, Stage]] = [
    ("corpus", corpus_stage),
    ("describe", describe_stage),
    ("targets", run_targets),
    ("replay", run_replay),
]


def collect_rejects(root: Path, stage_dirs: list[Path]) -> Path:
    """Write `{root}/rejects.jsonl`: every stage's rejects, each tagged with its stage's folder name."""
    path = root / "rejects.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for stage_dir in stage_dirs:
        for reject in read_rejects(stage_dir):
            lines.append(json.dumps({"stage": stage_dir.name, **reject}, default=str) + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)
    return path


def preparation_settings(cfg: DictConfig) -> dict:
    """The settings that decide what the stages write: runs that differ only in how the work is split
    (`shard`, `num_proc`, `stages`) or in their own log folder (`hydra`, `paths.output_dir`, Hydra's
    time-stamped run folder) may share a data folder; runs with other settings may not."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in ("shard", "num_proc", "stages", "hydra"):
        plain.pop(key, None)
    (plain.get("paths") or {}).pop("output_dir", None)
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def prepare(cfg: DictConfig, stages: list[tuple[str, Stage]] | None = None) -> dict[str, Any]:
    """Run the data-preparation stages in order.

    Args:
        cfg: the composed `conf/prepare.yaml` config (`paths`, `data`, `describe`, `num_proc`, `shard`, ...).
        stages: the pipeline (default `STAGES`); `cfg.stages` picks which of them run, in pipeline order.

    Returns:
        The state the stages built (e.g. `inputs`, `described`, `described_dir`).
    """
    # Every group's settings are checked before any stage spends time (a typo in `target` must not wait
    # for the corpus and its transcripts).
    check_data_config(cfg.data)
    if "describe" in cfg:
        describe_config(cfg.describe)  # also reads the user's attribute YAMLs and extractor modules
    try:
        attribute_tasks()  # every attribute YAML's `task` block, checked before any stage spends time
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if "target" in cfg:
        target_config(cfg.target)
    if "replay" in cfg:
        replay_config(cfg.replay)
    parse_shard(cfg.get("shard", "0/1"))
    num_proc = cfg.get("num_proc", 1)
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ConfigError(f"num_proc={num_proc!r}: the describe stage needs at least 1 process")
    state: dict[str, Any] = {}
    stages = stages or STAGES
    selected = list(cfg.get("stages") or [name for name, _ in stages])
    unknown = sorted(set(selected) - {name for name, _ in stages})
    if unknown:
        raise ConfigError(f"stages={selected}: unknown stage(s) {unknown}; known: {[n for n, _ in stages]}")
    with preparing(cfg.paths.data_dir, key_digest(preparation_settings(cfg))):
        for name, stage in stages:
            if name not in selected:
                logger.info("stage %s: not selected (stages=%s)", name, selected)
                continue
            logger.info("stage %s", name)
            stage(cfg, state)
        stage_dirs = [v for k, v in state.items() if k.endswith("_dir") and k != "corpus_dir"]
        if state.get("described") is not None:  # None: other shards are still running
            collect_rejects(data_root(cfg), stage_dirs)
    return state
