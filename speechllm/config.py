"""The one place where config `_target_`s become objects.

Configs travel with checkpoints and experiment presets, so a config must not be able to run arbitrary
code: `instantiate` refuses any `_target_` that is not in `ALLOWED_TARGETS`, before importing it.
Everything else in the project builds components from plain keys or registry names. The one way a
config group is checked against its dataclass schema (`check_section`) and the small helpers that
config checks share (`flatten`, `override_value`) live here too.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

ALLOWED_TARGETS: frozenset[str] = frozenset(
    {
        "speechllm.model.adapters.QFormerAdapter",
        "speechllm.model.adapters.StackMLPAdapter",
        "speechllm.model.adapters.ConvAdapter",
    }
)


# The package's configs (linked as conf/ at the repository root): every entry point composes from here.
CONF_DIR = Path(__file__).resolve().parent / "conf"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what to do."""


def user_config_dirs() -> list[Path]:
    """The config folders of the user's own that the running Hydra app reads (`--config-dir`), besides the
    package's: their `attributes/` hold the user's attribute YAMLs. Empty outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    return [
        Path(s.path) for s in sources if s.schema == "file" and Path(s.path).resolve() != CONF_DIR.resolve()
    ]


def check_section(schema: type, node: Any, prefix: str = "") -> Any:
    """A config group checked against its dataclass schema: every group of every entry point goes through here.

    The schema's defaults equal the group's YAML (a test compares them), so the YAML stays the one
    place a user reads them.

    Args:
        schema: the dataclass (nested dataclasses for nested sections).
        node: the group's config (DictConfig or dict; None: the defaults). Interpolations are resolved
            within the whole config.
        prefix: the group's dotted name with a trailing dot ("trainer."), for messages.

    Returns:
        The schema instance (nested dataclasses built too).

    Raises:
        ConfigError: an unknown key (naming it and listing the section's known keys) or a value of the
            wrong type (naming the key).
    """
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node or {}))
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or str(e).split("'")[1]
        section, parts = schema, str(key).split(".")
        for part in parts[:-1]:  # a nested section (kd, align, generation): list that section's keys
            hint = typing.get_type_hints(section).get(part)
            section = hint if dataclasses.is_dataclass(hint) else section
        fields = sorted(f.name for f in dataclasses.fields(section))
        where = prefix + ".".join(parts[:-1]) if len(parts) > 1 else prefix.rstrip(".") or "the root"
        raise ConfigError(f"unknown config key '{prefix}{key}'. Known keys of {where}: {fields}") from None
    except OmegaConfBaseException as e:
        full_key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        raise ConfigError(f"bad value for config key '{prefix}{full_key}': {e.msg}") from None


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); lists are values."""
    if isinstance(config, dict):
        return {k: v for key, sub in config.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): config}


def differences(old: dict, new: dict, prefix: str = "", sep: str = "!=") -> list[str]:
    """Each dotted key whose value differs between two nested configs, as ``key: old <sep> new`` (a key
    missing on one side reads `<unset>`), in key order."""
    a, b = flatten(old, prefix), flatten(new, prefix)
    return [
        f"{k}: {a.get(k, '<unset>')!r} {sep} {b.get(k, '<unset>')!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, "<unset>") != b.get(k, "<unset>")
    ]


def override_value(value: Any) -> str:
    """A value written as a Hydra command-line override reads it back (lists, null, quoted strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if isinstance(value, str) and (not text or re.search(r"[^\w./:@+-]", text)):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def find_targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every `_target_` in a config tree.

    Args:
        node: a DictConfig/ListConfig or plain dict/list.
        path: dotted prefix for the returned key paths.

    Returns:
        (dotted key path of the node holding `_target_`, target string) pairs.
    """
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append((path or "<root>", str(node["_target_"])))
        for key, value in node.items():
            found.extend(find_targets(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(find_targets(value, f"{path}[{i}]"))
    return found


def check_targets(cfg: Any) -> None:
    """Raise ConfigError if any `_target_` in `cfg` is outside the allow-list."""
    for key, target in find_targets(cfg):
        if target not in ALLOWED_TARGETS:
            raise ConfigError(
                f"{key}._target_={target!r} is not allowed. Allowed targets: {sorted(ALLOWED_TARGETS)}. "
                "Add new components to speechllm.config.ALLOWED_TARGETS in code, not in a config."
            )


def instantiate(node: DictConfig | dict, **kwargs: Any) -> Any:
    """Build the object a config node describes, after checking its `_target_` against the allow-list.

    Args:
        node: a config node with a `_target_` key (nested `_target_`s are checked too, and must be
            allowed, but keep trees one level deep: deep ones give opaque errors).
        **kwargs: run-time arguments (widths known only from the loaded models, for instance).

    Returns:
        The instantiated object.
    """
    if "_target_" not in node:
        raise ConfigError(f"config node has no _target_: {OmegaConf.to_yaml(OmegaConf.create(node))}")
    # Resolve first and check what is left: an interpolation such as ${oc.create:{_target_: ...}} reads as
    # a plain string before resolution and becomes a node of its own after it.
    try:
        # A DictConfig resolves in its parent's context (where its interpolations point); a dict alone.
        resolved = OmegaConf.to_container(
            node if isinstance(node, DictConfig) else OmegaConf.create(node), resolve=True
        )
    except Exception as err:  # omegaconf raises several types; all mean the node cannot be resolved
        raise ConfigError(f"config node cannot be resolved: {err}") from None
    check_targets(resolved)
    check_targets(kwargs)
    leftover = _interpolations(resolved)
    if leftover:
        # instantiate would resolve these a second time, after the check.
        raise ConfigError(
            f"{leftover[0][0]}: a resolved value still holds an interpolation ({leftover[0][1]!r})"
        )
    return hydra.utils.instantiate(resolved, **kwargs)


def _interpolations(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [hit for k, v in node.items() for hit in _interpolations(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [hit for i, v in enumerate(node) for hit in _interpolations(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) and "${" in node else []
