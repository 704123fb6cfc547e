"""How label targets, verified targets and the evaluation speak of each attribute: from its YAML.

An attribute is one extractor (`speechllm.describe`) and one YAML in `conf/attributes/`. Besides what
the extractor and the renderer read, the YAML's optional `task` block says how the attribute is asked
about and answered:

    task:
      name: speed                 # label column label_<name>, evaluation task <name> (default: the file's name)
      clause: "They speak at a {v} pace."      # the label target's sentence ({v}: the label value)
      probe: "The speaker talks at a {v} pace." # the listening probe's answer ({V}: capitalised; default: clause)
      keywords: [pace, speed, how fast]         # an instruction containing one asks about this attribute
      questions: ["Is the person talking {options}?"]   # unseen evaluation phrasings ({options}: the classes)
      training_questions: ["How fast does the speaker talk?"]   # what the `attributes` pool asks in training
      synonyms: {fast: [quick, rapid], slow: [slowly]}  # words that name each class in an answer
      weak: [she, he]             # synonyms that count only when no other class word is found

So a new attribute appears in descriptions, label targets and evaluation tasks with no code beyond
its extractor. A folder of the user's own YAMLs adds to or replaces the package's, through
:func:`use_attributes_dir`: `describe.attributes_dir`, or `attributes/` in a `--config-dir` of theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from speechllm.config import CONF_DIR, user_config_dirs

ATTRIBUTES_DIR = CONF_DIR / "attributes"
TASK_KEYS = ("name", "clause", "probe", "keywords", "questions", "training_questions", "synonyms", "weak")

_extra_dirs: list[Path] = []


@dataclass(frozen=True)
class AttributeTask:
    """What an attribute's YAML says about asking and answering it.

    Attributes:
        name: the task and label name (`label_<name>` column).
        attribute: the attribute (YAML file) it comes from.
        clause: the label target's sentence, with `{v}` for the value ("" when it has none).
        probe: the listening probe's templated answer (`{v}`, or `{V}` capitalised); default: `clause`.
        keywords: phrases (lowercase words) that mark an instruction as asking about it.
        questions: unseen evaluation phrasings.
        training_questions: the phrasings the `attributes` instruction pool asks about it in training;
            each must name the attribute by one of `keywords` and be none of `questions`.
        synonyms: class -> the words and phrases that name it in an answer.
        weak: synonyms that decide only when no other class word is present.
    """

    name: str
    attribute: str
    clause: str
    probe: str
    keywords: tuple[str, ...]
    questions: tuple[str, ...]
    training_questions: tuple[str, ...]
    synonyms: dict[str, tuple[str, ...]]
    weak: frozenset[str]


def use_attributes_dir(path: str | Path | None) -> None:
    """Read a user's attribute YAMLs too: a file there adds an attribute or replaces the package's."""
    if path is None:
        return
    path = Path(path).resolve()
    if path != ATTRIBUTES_DIR and path not in _extra_dirs:
        _extra_dirs.append(path)
        attribute_tasks.cache_clear()


def use_user_attribute_dirs(attributes_dir: str | Path | None = None) -> None:
    """Read the user's attribute YAMLs: `attributes/` of each --config-dir of theirs (every entry point reads
    them, so training asks what data preparation asked), then `attributes_dir` (`describe.attributes_dir`)."""
    for folder in [*(d / "attributes" for d in user_config_dirs()), attributes_dir]:
        if folder is not None and Path(folder).is_dir():
            use_attributes_dir(folder)


def _yaml_files() -> dict[str, Path]:
    files = {p.stem: p for p in sorted(ATTRIBUTES_DIR.glob("*.yaml"))}
    for folder in _extra_dirs:
        files.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return files


def attribute_yaml(name: str, attributes_dir: str | Path | None = None) -> Path:
    """Where an attribute's YAML is read from: `attributes_dir`, else the user's folders registered with
    :func:`use_attributes_dir` (the latest first), else the package's `conf/attributes/`. The path in the
    package's folder is returned when no folder has one (so an error can name it)."""
    folders = [Path(attributes_dir)] if attributes_dir else []
    for folder in [*folders, *reversed(_extra_dirs)]:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return ATTRIBUTES_DIR / f"{name}.yaml"


def task_from_yaml(attribute: str, path: Path) -> AttributeTask | None:
    """The task an attribute YAML declares (None without a `task` block).

    Raises:
        ValueError: an unknown key in the block, or a value of the wrong shape, naming the file.
    """
    block = (yaml.safe_load(path.read_text()) or {}).get("task")
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ValueError(f"{path}: `task` must be a mapping with keys {list(TASK_KEYS)}")
    unknown = sorted(set(block) - set(TASK_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) task.{', task.'.join(unknown)}; known: {list(TASK_KEYS)}")
    synonyms = block.get("synonyms") or {}
    if not isinstance(synonyms, dict) or not all(isinstance(v, list) for v in synonyms.values()):
        raise ValueError(f"{path}: task.synonyms must map each class to a list of words")
    clause = block.get("clause") or ""
    if clause and "{v}" not in clause:
        raise ValueError(f"{path}: task.clause {clause!r} has no {{v}} for the value")
    probe = block.get("probe") or clause
    if probe and "{v}" not in probe and "{V}" not in probe:
        raise ValueError(f"{path}: task.probe {probe!r} has no {{v}} or {{V}} for the value")
    keywords = tuple(str(k).lower() for k in block.get("keywords") or ())
    questions = tuple(str(q) for q in block.get("questions") or ())
    training_questions = tuple(str(q) for q in block.get("training_questions") or ())
    unseen = {_words(q) for q in questions}
    for question in training_questions:
        # Verification and label answers find what a training question asks by these keywords, and the
        # evaluation's phrasings must stay unseen.
        if _words(question) in unseen:
            raise ValueError(
                f"{path}: {question!r} is both a training question and an unseen evaluation question"
            )
        if not mentions(question, keywords):
            raise ValueError(
                f"{path}: task.training_questions {question!r} names none of task.keywords {list(keywords)}"
            )
    return AttributeTask(
        name=str(block.get("name") or attribute),
        attribute=attribute,
        clause=clause,
        probe=probe,
        keywords=keywords,
        questions=questions,
        training_questions=training_questions,
        synonyms={str(c).lower(): tuple(str(w).lower() for w in ws) for c, ws in synonyms.items()},
        weak=frozenset(str(w).lower() for w in block.get("weak") or ()),
    )


def _words(text: str) -> str:
    """`text` as its lowercase words, space-padded: the form keywords are matched in."""
    return " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "


def mentions(text: str, keywords) -> bool:
    """Whether `text` contains one of `keywords` (lowercase words or phrases) as whole words."""
    words = _words(text)
    return any(f" {k} " in words for k in keywords)


@cache
def attribute_tasks() -> dict[str, AttributeTask]:
    """Every attribute task, by task name: the package's YAMLs, then the user folders' (which win).

    The order is the describe stage's default attribute order (conf/describe/default.yaml), then the
    others by name: label answers list their clauses, and reports their tasks, in this order.
    """
    default = yaml.safe_load((ATTRIBUTES_DIR.parent / "describe" / "default.yaml").read_text())["attributes"]
    files = _yaml_files()
    names = [a for a in default if a in files] + sorted(set(files) - set(default))
    tasks = (task_from_yaml(name, files[name]) for name in names)
    return {t.name: t for t in tasks if t is not None}
