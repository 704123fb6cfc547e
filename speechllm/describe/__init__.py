"""Describing audio: registered attribute extractors and the renderers that turn them into text.

Use:
    configs, order = load_configs(["pitch", "speaking_rate", "gender"])
    texts = describe_clips(clips, ["pitch", "speaking_rate", "gender"], configs, order, renderer="natural")
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from speechllm.attributes import use_attributes_dir

# The built-in attributes register themselves on import; new attribute modules are added here.
from speechllm.describe import signal, speaker, transcript  # noqa: F401
from speechllm.describe.features import Clip, has_voiced_speech
from speechllm.describe.registry import (
    ATTRIBUTES,
    ATTRIBUTES_DIR,
    attribute_names,
    extract_all,
    load_attribute_config,
    register_attribute,
    resolve_order,
)
from speechllm.describe.render import NO_VOICE, RENDERERS, known, register_renderer, render

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTES_DIR",
    "RENDERERS",
    "Clip",
    "attribute_names",
    "describe_clips",
    "import_extractor_modules",
    "load_configs",
    "load_attribute_config",
    "register_attribute",
    "register_renderer",
    "render",
]


def import_extractor_modules(modules: Iterable[str]) -> None:
    """Import modules of the user's own (`describe.modules`): their `@register_attribute` extractors join the
    built-in ones. A module is imported once per process (worker processes import it again).

    Raises:
        ModuleNotFoundError: a module that cannot be found on `sys.path` (installed, or on PYTHONPATH).
    """
    for name in modules:
        importlib.import_module(name)


def load_configs(
    attributes: list[str], attributes_dir: str | Path | None = None, overrides: dict | None = None
) -> tuple[dict[str, dict], list[str]]:
    """Configs of the selected attributes and of everything they require, and the order to run them.

    Args:
        attributes: selected names (e.g. from `describe.attributes`).
        attributes_dir: folder of attribute YAMLs (default `conf/attributes/`).
        overrides: name -> keys replacing that attribute's YAML keys.

    Returns:
        (name -> config for every attribute that runs, run order).
    """
    overrides = overrides or {}
    use_attributes_dir(attributes_dir)  # its YAMLs' `task` blocks: label targets and evaluation tasks
    configs = {n: load_attribute_config(n, attributes_dir, overrides.get(n)) for n in attributes}
    # Requirements can bring in attributes whose own configs add requirements: iterate to a fixed point.
    while True:
        order = resolve_order(attributes, configs)
        missing = [n for n in order if n not in configs]
        if not missing:
            return configs, order
        for n in missing:
            configs[n] = load_attribute_config(n, attributes_dir, overrides.get(n))


def describe_clips(
    clips: list[Clip], attributes: list[str], configs: dict[str, dict], order: list[str], renderer: str
) -> list[str]:
    """Extract every attribute in `order` into `clip.values` and render each clip's description.

    Args:
        clips: the batch (their `values` are filled in place).
        attributes: the attributes the description mentions, in order.
        configs: from `load_configs`.
        order: from `load_configs`.
        renderer: a name in `RENDERERS`.

    Returns:
        One description per clip.
    """
    extract_all(clips, order, configs)
    descriptions = []
    for clip in clips:
        # Every row gets its length (DeSTA2's timestamps need it) even when `duration` is not mentioned.
        clip.values.setdefault("duration", round(clip.duration, 3))
        values = clip.values
        # Noise or a hum has no gender, pitch or speed (their extractors leave them out): the description says
        # why they are missing, so the LLM reading it does not take it for a speaker it was told nothing about.
        if any(not known(name, values) for name in attributes) and not has_voiced_speech(clip):
            values = {**values, NO_VOICE: True}
        descriptions.append(render(renderer, values, attributes, configs))
    return descriptions
