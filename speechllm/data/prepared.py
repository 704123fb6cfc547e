"""The prepared data a training run reads, checked against how it was made, and the command that makes it.

Training reads `<data_dir>/<name>/targets/<folder>/` and the replay datasets its mixture draws from. Before
any model loads, :func:`check_prepared` makes sure they exist and that the targets were made with this run's
`target` settings (another LLM or instruction pool would quietly break the self-output principle); when
not, it names the folder, what differs, and the exact `data_prep/prepare.py` command that makes them (or
runs it, with `prepare_missing=true`).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from speechllm.config import CONF_DIR, ConfigError, flatten, override_value
from speechllm.data import layout, stage
from speechllm.data.stage import settings_differences, stage_stats
from speechllm.data.targets import target_config, targets_fingerprint


@dataclass
class DataPaths:
    """Where the prepared data a run reads lives.

    Attributes:
        targets: `<data_dir>/<data.name>/targets/<target.folder or target.mode>/`.
        replay: replay dataset name -> `<data_dir>/replay/<name>/` (only sources the mixture uses).
    """

    targets: Path
    replay: dict[str, Path]


def data_paths(cfg: DictConfig, replay_sources: Sequence[str]) -> DataPaths:
    """The prepared-data folders this config reads.

    Args:
        cfg: the composed training config (needs `paths.data_dir`, `data.name`, `target.mode`).
        replay_sources: the replay datasets the run's mixture draws from (`MixtureConfig.sources()`).

    Returns:
        The folders (not checked for existence; see :func:`check_prepared`).
    """
    for key in ("paths.data_dir", "data.name", "target.mode"):
        if OmegaConf.select(cfg, key, default=None) in (None, ""):
            raise ConfigError(f"config key '{key}' is missing or empty")
    replay = {name: layout.replay_dir(cfg.paths.data_dir, name) for name in replay_sources}
    folder = OmegaConf.select(cfg, "target.folder", default=None)
    targets = layout.targets_dir(cfg.paths.data_dir, cfg.data.name, cfg.target.mode, folder)
    return DataPaths(targets=targets, replay=replay)


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """The chosen option of each config group (`data: demo`, `target: label`, ...), where known."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            choices = HydraConfig.get().runtime.choices
        except ValueError:  # not running under Hydra (a plain OmegaConf config)
            choices = {}
    return {str(k): str(v) for k, v in dict(choices).items() if v is not None}


def prepare_command(cfg: DictConfig, replay_sources: Sequence[str]) -> list[str]:
    """The `data_prep/prepare.py` command line that makes the data this training config reads.

    It repeats this run's choices for the groups data preparation shares with training (data,
    target, replay), the keys that decide where the outputs go and which LLM writes targets and replay,
    the run's own command-line overrides of those groups, and the config's `prepare_args`.

    Args:
        cfg: the composed training config.
        replay_sources: the replay datasets the run's mixture draws from (`MixtureConfig.sources()`).

    Returns:
        argv, starting with `python`.
    """
    choices = group_choices(cfg)
    args = ["python", "data_prep/prepare.py"]
    for group in ("data", "target", "replay"):
        if group in choices:
            args.append(f"{group}={choices[group]}")
    args.append(f"data.name={cfg.data.name}")
    args.append(f"paths.data_dir={cfg.paths.data_dir}")
    for key in ("target.llm", "replay.llm"):
        value = OmegaConf.select(cfg, key, default=None)
        if value:
            args.append(f"{key}={value}")
    args.extend(_preset_target_args(cfg, choices.get("target")))
    if replay_sources:
        args.append(f"replay.build=[{','.join(replay_sources)}]")
    elif "replay" in cfg:
        args.append("replay.build=[]")
    for override in _command_line_overrides():
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".")[0] in ("data", "target", "replay") and "." in key and override not in args:
            args.append(override)
    args.extend(str(a) for a in cfg.get("prepare_args", []) or [])
    return args


def _preset_target_args(cfg: DictConfig, choice: str | None) -> list[str]:
    """`target.<key>=<value>` for each target setting the run has beyond its target group's YAML (set by
    an experiment preset, e.g. the instruction pool), so the printed command makes matching targets."""
    group_file = CONF_DIR / "target" / f"{choice}.yaml"
    if "target" not in cfg or choice is None or not group_file.is_file():
        return []
    base = flatten(OmegaConf.to_container(OmegaConf.load(group_file)))
    run = flatten(OmegaConf.to_container(cfg.target, resolve=True))
    return [f"target.{k}={override_value(v)}" for k, v in run.items() if k != "llm" and base.get(k) != v]


def _command_line_overrides() -> list[str]:
    """This run's Hydra command-line overrides (empty outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def check_prepared(cfg: DictConfig, replay_sources: Sequence[str]) -> DataPaths:
    """Fail (or prepare, with `prepare_missing=true`) when the data the run reads is missing, or when its
    targets were made with other `target` settings than this run's (another LLM, instruction pool,
    verification...): training on them would quietly break the self-output principle.

    Args:
        cfg: the composed training config.
        replay_sources: the replay datasets the run's mixture draws from (`MixtureConfig.sources()`).

    Returns:
        The data folders, all present and current.

    Raises:
        ConfigError: naming each missing or stale folder (and what differs) and the exact command that
            makes it.
    """
    paths = data_paths(cfg, replay_sources)
    problems = _unprepared(cfg, paths)
    if not problems:
        return paths
    command = prepare_command(cfg, replay_sources)
    if cfg.get("prepare_missing", False):
        import subprocess
        import sys

        # The same overrides, run by the installed package's own entry point (any working folder); an
        # absolute data dir, since the run may have changed folders.
        overrides = [a if not a.startswith("paths.data_dir=") else f"paths.data_dir={Path(cfg.paths.data_dir).resolve()}"
                     for a in command[2:]]  # fmt: skip
        subprocess.run([sys.executable, "-m", "speechllm.cli", "prepare", *overrides], check=True)
        problems = _unprepared(cfg, paths)
        if not problems:
            return paths
    raise ConfigError(
        "prepared data is not this run's: "
        + "; ".join(problems)
        + f". Make it with:\n  {shlex.join(command)}\nor rerun training with prepare_missing=true."
    )


def _unprepared(cfg: DictConfig, paths: DataPaths) -> list[str]:
    """Missing folders, and targets whose recorded settings differ from the run's `target` settings."""
    problems = [f"{p} is missing" for p in [paths.targets, *paths.replay.values()] if not stage.is_finished(p)]
    if problems or "target" not in cfg:
        return problems
    try:
        wanted = target_config(cfg.target)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    # The instruction draw's seed is prepare's, not the run's: any seed's targets serve any training seed.
    made_with = (stage_stats(paths.targets).get("settings") or {}).get("seed", 0)
    differences = settings_differences(paths.targets, targets_fingerprint(wanted, made_with))
    if differences:
        problems.append(f"{paths.targets} was made with other settings ({'; '.join(differences)})")
    return problems
