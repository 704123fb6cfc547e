"""The attribute registry: names -> extractors, plus each attribute's YAML.

An attribute is one extractor registered here with `@register_attribute("name")` and one YAML,
`conf/attributes/<name>.yaml` (its bins, words, label column and how it renders). Names are data:
they appear in `describe.attributes=[...]`, in the described dataset's columns and in descriptions.

An extractor takes a batch of clips and the attribute's config and returns one dict of column values
per clip (the attribute's word under its own name, plus any measurement columns such as `pitch_hz`).
Every clip gets every column (missing words are "", missing numbers NaN) so all rows share a schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from speechllm.attributes import ATTRIBUTES_DIR, attribute_yaml
from speechllm.describe.features import Clip

Extractor = Callable[[list[Clip], dict], list[dict[str, Any]]]


@dataclass(frozen=True)
class Attribute:
    """A registered attribute.

    Attributes:
        name: registry name, also the column holding its word.
        extract: the extractor, `(clips, config) -> list of column dicts`.
        requires: attributes whose values this one reads from `clip.values` (run first).
        keys: the YAML keys the extractor reads, beside :data:`COMMON_KEYS` (None: not declared, unchecked).
    """

    name: str
    extract: Extractor
    requires: tuple[str, ...] = ()
    keys: tuple[str, ...] | None = None


ATTRIBUTES: dict[str, Attribute] = {}
# Keys any attribute YAML may have: read by the renderers, `speechllm.attributes` and the run order.
COMMON_KEYS = ("words", "render", "task", "requires")


def register_attribute(
    name: str, *, requires: Iterable[str] = (), keys: Iterable[str] | None = None
) -> Callable[[Extractor], Extractor]:
    """Register an extractor under `name`.

    Args:
        name: the attribute's name (snake_case); `conf/attributes/<name>.yaml` must exist.
        requires: attributes this extractor reads from `clip.values`; they run before it. A YAML may
            add more under its own `requires:` key (e.g. pitch bins relative to gender).
        keys: the YAML keys the extractor reads, beside :data:`COMMON_KEYS`; with them a typo in its
            YAML fails by name. None leaves the YAML unchecked.

    Returns:
        A decorator that registers the function and returns it unchanged.
    """

    def decorator(fn: Extractor) -> Extractor:
        if name in ATTRIBUTES:
            raise ValueError(
                f"attribute {name!r} is already registered (by {ATTRIBUTES[name].extract.__module__})"
            )
        declared = tuple(keys) if keys is not None else None
        ATTRIBUTES[name] = Attribute(name=name, extract=fn, requires=tuple(requires), keys=declared)
        return fn

    return decorator


def attribute_names(attributes_dir: str | Path | None = None) -> list[str]:
    """Names of the attribute YAMLs in `attributes_dir` (default `conf/attributes/`)."""
    return sorted(p.stem for p in Path(attributes_dir or ATTRIBUTES_DIR).glob("*.yaml"))


def load_attribute_config(
    name: str, attributes_dir: str | Path | None = None, overrides: dict | None = None
) -> dict:
    """An attribute's YAML as a dict, with optional overrides merged on top.

    Args:
        name: the attribute.
        attributes_dir: a folder of attribute YAMLs read first (then the user's folders and the package's
            `conf/attributes/`: :func:`speechllm.attributes.attribute_yaml`).
        overrides: keys replacing the YAML's (one level deep, e.g. `{"fmin": 50}`).

    Returns:
        The config dict.

    Raises:
        KeyError: unknown attribute (no registered extractor), naming the known ones.
        FileNotFoundError: registered but no YAML.
    """
    if name not in ATTRIBUTES:
        raise KeyError(f"unknown attribute {name!r}; registered: {sorted(ATTRIBUTES)}")
    path = attribute_yaml(name, attributes_dir)
    if not path.exists():
        raise FileNotFoundError(f"attribute {name!r} has no config: expected {path}")
    config = yaml.safe_load(path.read_text()) or {}
    config.update(overrides or {})
    known = ATTRIBUTES[name].keys
    unknown = sorted(set(config) - set(COMMON_KEYS) - set(known)) if known is not None else []
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {unknown} for attribute {name!r}; it reads {sorted({*COMMON_KEYS, *known})}"
        )
    return config


def resolve_order(names: Iterable[str], configs: dict[str, dict]) -> list[str]:
    """The attributes to run, each after those it requires (which are added when missing).

    Args:
        names: the selected attributes.
        configs: name -> config; requirements from `requires:` in a config count too. Configs of
            attributes pulled in only as requirements are looked up by the caller afterwards.

    Returns:
        Names in a runnable order, the selected ones first where the order allows.

    Raises:
        KeyError: an unknown attribute. ValueError: a requirement cycle.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in ATTRIBUTES:
            raise KeyError(f"unknown attribute {name!r}; registered: {sorted(ATTRIBUTES)}")
        if name in visiting:
            raise ValueError(f"attribute requirements form a cycle: {' -> '.join((*chain, name))}")
        visiting.add(name)
        needs = (*ATTRIBUTES[name].requires, *configs.get(name, {}).get("requires", []))
        for need in needs:
            visit(need, (*chain, name))
        visiting.discard(name)
        order.append(name)

    for name in names:
        visit(name, ())
    return order


def extract_all(clips: list[Clip], order: list[str], configs: dict[str, dict]) -> None:
    """Run the attributes in `order` over a batch, storing each one's columns in `clip.values`.

    Args:
        clips: the batch.
        order: from `resolve_order`.
        configs: name -> config for every name in `order`.
    """
    for name in order:
        outputs = ATTRIBUTES[name].extract(clips, configs[name])
        if len(outputs) != len(clips):
            raise RuntimeError(f"attribute {name!r} returned {len(outputs)} results for {len(clips)} clips")
        for clip, columns in zip(clips, outputs, strict=True):
            clip.values.update(columns)
