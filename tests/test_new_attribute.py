"""A new attribute is one extractor and one YAML: it appears in descriptions, label targets, verified
targets' keyword matching, the answer parser and the evaluation's tasks with no other code."""

import numpy as np
import pytest

from speechllm import attributes
from speechllm.data.instructions import asked_attributes, resolve_pool
from speechllm.data.targets import label_answer
from speechllm.describe import Clip, describe_clips, load_configs, register_attribute
from speechllm.describe.registry import ATTRIBUTES
from speechllm.eval.probe import answer
from speechllm.eval.tasks import select_tasks
from speechllm.parsing import parse_label

BREATHINESS_YAML = """\
words: [breathy, clear]
render:
  tag: Breathiness
  natural:
    slot: manner
    phrases: {breathy: in a breathy voice, clear: in a clear voice}
    template: "{breathiness}"
task:
  clause: "The voice is {v}."
  keywords: [breathy, breathiness]
  questions: ["Does the voice sound {options}?"]
  training_questions: ["How breathy is this voice?", "Is the voice breathy or clear?"]
  synonyms:
    breathy: [airy, whispery]
    clear: [crisp]
"""


@pytest.fixture
def breathiness(tmp_path):
    (tmp_path / "breathiness.yaml").write_text(BREATHINESS_YAML)

    @register_attribute("breathiness", keys=())  # it reads no keys of its own
    def extract(clips, config):
        # Stands in for a real measurement: breathy when the signal is quiet.
        return [{"breathiness": "breathy" if np.abs(c.audio).mean() < 0.05 else "clear"} for c in clips]

    yield tmp_path
    ATTRIBUTES.pop("breathiness")
    attributes._extra_dirs.remove(tmp_path.resolve())
    attributes.attribute_tasks.cache_clear()


def test_a_new_attribute_needs_one_extractor_and_one_yaml(breathiness):
    configs, order = load_configs(["breathiness"], attributes_dir=breathiness)
    sr = 16000
    clips = [Clip("a", np.full(sr, 0.01, np.float32), sr), Clip("b", np.full(sr, 0.3, np.float32), sr)]
    desta2 = describe_clips(clips, ["breathiness"], configs, order, "desta2")
    assert [d.split("] ")[1] for d in desta2] == ["(Breathiness: breathy)", "(Breathiness: clear)"]
    assert "breathy voice" in describe_clips(clips, ["breathiness"], configs, order, "natural")[0]

    row = {"label_breathiness": "breathy", "label_gender": "male"}
    assert label_answer(row, "Is the voice breathy?") == "The voice is breathy."
    assert label_answer(row, "Describe the audio.") == "The speaker is male. The voice is breathy."
    assert asked_attributes("How breathy is this voice?") == ["breathiness"]
    # Training asks about it too: its questions join the `attributes` pool the self-output targets draw from.
    assert {"How breathy is this voice?", "Is the voice breathy or clear?"} <= set(resolve_pool("attributes"))
    assert parse_label("It sounds rather airy to me.", "breathiness", ["breathy", "clear"]) == "breathy"
    assert answer("breathiness", "clear") == "The voice is clear."

    tasks, skipped = select_tasks(["clip_id", "label_breathiness", "label_text"])
    assert [t.name for t in tasks] == ["breathiness", "content"]
    assert tasks[0].questions == ("Does the voice sound {options}?",)


def test_a_typo_in_an_attribute_yaml_names_the_key(breathiness):
    (breathiness / "breathiness.yaml").write_text(BREATHINESS_YAML.replace("words:", "wrds:"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['wrds'\] for attribute 'breathiness'"):
        load_configs(["breathiness"], attributes_dir=breathiness)


def test_a_typo_in_an_attribute_task_block_names_the_key(tmp_path):
    (tmp_path / "breathiness.yaml").write_text(BREATHINESS_YAML.replace("  clause:", "  clauses:"))
    with pytest.raises(ValueError, match=r"breathiness.yaml: unknown key\(s\) task.clauses"):
        attributes.task_from_yaml("breathiness", tmp_path / "breathiness.yaml")


@pytest.mark.parametrize(
    "question, error",
    [
        (
            "How does this voice sound?",
            "names none of task.keywords",
        ),  # verification could not tell what it asks
        ("Does the voice sound {options}?", "both a training question and an unseen evaluation question"),
    ],
)
def test_a_training_question_that_cannot_be_checked_or_is_unseen_fails_naming_the_file(
    tmp_path, question, error
):
    yaml_text = BREATHINESS_YAML.replace('["How breathy is this voice?", ', f'["{question}", ')
    (tmp_path / "breathiness.yaml").write_text(yaml_text)
    with pytest.raises(ValueError, match=rf"breathiness.yaml: .*{error}"):
        attributes.task_from_yaml("breathiness", tmp_path / "breathiness.yaml")
