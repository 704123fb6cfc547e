"""On-policy losses (speechllm.train.onpolicy): opd's reverse KL, grpo's advantages, rewards and loss, and
both training the smoke model through train()."""

import math

import datasets
import pytest
import torch
from test_train import smoke_cfg, smoke_dirs, step_losses  # noqa: F401  (the session fixture)
from transformers import TrainerCallback

from speechllm.config import ConfigError
from speechllm.train import onpolicy
from speechllm.train.onpolicy import answer_outcome, group_advantages, grpo_loss, reverse_kl
from speechllm.train.run import train

GENDER = ("female", "male")


def test_reverse_kl_is_zero_for_a_student_that_equals_its_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(5, 17)
    student = teacher.clone().requires_grad_(True)
    kl = reverse_kl(student, teacher)
    assert kl.abs().max().item() < 1e-6
    kl.sum().backward()
    assert student.grad.abs().max().item() < 1e-6  # and nothing to move
    assert (reverse_kl(torch.randn(5, 17), teacher) > 0.01).all()


def test_group_advantages_are_zero_for_equal_rewards_and_rank_the_others():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(4))
    assert adv[1, 1] > 0 > adv[1, 0] and adv[1].sum().abs() < 1e-5


def test_grpo_loss_is_the_policy_gradient_plus_the_reference_kl():
    logits = torch.randn(4, 9, requires_grad=True)
    tokens = torch.tensor([1, 2, 3, 4])
    logp = torch.log_softmax(logits, -1)[torch.arange(4), tokens]
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.0])
    loss, parts = grpo_loss(logp, logp.detach(), advantages, kl_weight=0.1)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (expected,) = torch.autograd.grad(-(advantages * logp).sum(), logits)
    assert torch.allclose(grad, expected, atol=1e-6)
    _, parts = grpo_loss(logp, logp.detach() - 0.5, advantages, kl_weight=0.1)
    assert parts["kl"] > 0


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ("The speaker is a woman.", "right"),
        ("A man is speaking.", "wrong"),
        ("I cannot tell from the audio.", "silent"),
        ("The voice is female, or maybe male.", "hedging"),
    ],
)
def test_answers_are_judged_by_the_evaluation_parser(answer, outcome):
    assert answer_outcome(answer, {"gender": "female"}, "gender", GENDER) == outcome


def test_bad_grpo_settings_are_refused_by_key():
    with pytest.raises(ConfigError, match="grpo.group_size=1"):
        onpolicy.GRPOConfig(group_size=1).check()
    with pytest.raises(ConfigError, match="grpo.rewards"):
        onpolicy.GRPOConfig(rewards={"right": 1.0}).check()


@pytest.fixture(scope="module")
def attribute_data(smoke_dirs, tmp_path_factory):  # noqa: F811
    """The smoke clips with label targets to attribute questions (one asked attribute each)."""
    data = tmp_path_factory.mktemp("onpolicy") / "data"
    (data / "smoke").mkdir(parents=True)
    for part in ("corpus", "described"):
        (data / "smoke" / part).symlink_to(smoke_dirs["data"] / "smoke" / part, target_is_directory=True)
    return {"data": data, "cache": smoke_dirs["cache"]}


def test_opd_trains_the_smoke_model(attribute_data, tmp_path):
    metrics = train(smoke_cfg(attribute_data, tmp_path / "opd", "loss=opd", "opd.max_new_tokens=4",
                              "trainer.max_steps=2", "trainer.save_steps=0", "target.instructions=attributes", "task_kl_rows=128"))  # fmt: skip
    assert metrics["loss_type"] == "opd"
    assert all(math.isfinite(v) and v >= 0 for v in step_losses(metrics).values())
    assert all(s["train/kl_to_teacher"] >= 0 for s in metrics["steps"])
    # Forgetting on the task's own prompts (RL's Razor): the base reading descriptions vs the model hearing.
    task_kl = metrics["task_kl"]
    assert task_kl["rows"] == 10 and task_kl["tokens"] > 10 and 0 < task_kl["mean"] < 50 and task_kl["se"] > 0


def starts_with_a_vowel(text: str) -> bool:
    return bool(text) and text[0] in "aeiou"


class ExpectedReward(TrainerCallback):
    """The policy's chance of a first answer token that starts with a vowel, on the training prompts,
    before and after training."""

    def __init__(self, targets):
        self.targets, self.values = targets, []

    def _measure(self, model):
        rows = [{"audio_path": r["audio_path"], "transcript": r["transcript"], "instruction": r["instruction"]}
                for r in datasets.load_from_disk(str(self.targets))]  # fmt: skip
        decode = model.tokenizer.decode
        rewarded = [
            i
            for i in range(len(model.tokenizer))
            if starts_with_a_vowel(decode([i], skip_special_tokens=True).strip())
        ]
        batch = model.collator(padding_side="left", generation=True)(rows)
        with torch.no_grad():
            model.eval()
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, -1]
            model.train()
        self.values.append(float(torch.softmax(logits.float(), -1)[:, rewarded].sum(-1).mean()))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._measure(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._measure(model)


def test_a_few_grpo_steps_raise_the_reward_a_tiny_model_can_earn(attribute_data, tmp_path, monkeypatch):
    # A reward the tiny random model meets often enough to learn from: its one-token answer starts with a
    # vowel. Every part of grpo runs as in training but the judge.
    monkeypatch.setattr("speechllm.train.trainer.answer_outcome",
                        lambda answer, labels, task, classes: "right" if starts_with_a_vowel(answer) else "wrong")  # fmt: skip
    probe = ExpectedReward(attribute_data["data"] / "smoke" / "targets" / "label")
    metrics = train(
        smoke_cfg(attribute_data, tmp_path / "grpo", "loss=grpo", "grpo.max_new_tokens=1", "grpo.group_size=8",
                  "model.llm.finetune=full", "grpo.kl_weight=0", "trainer.max_steps=8", "trainer.save_steps=0", "trainer.learning_rate=3e-2", "trainer.lr_scheduler_type=constant",
                  "target.instructions=attributes"),
        callbacks=[probe],
    )  # fmt: skip
    rewards = [s["train/reward"] for s in metrics["steps"]]
    assert metrics["loss_type"] == "grpo" and len(rewards) == 8
    assert probe.values[1] > probe.values[0] + 0.1, probe.values


def test_grpo_keeps_the_model_near_its_reference_and_needs_one(attribute_data, tmp_path):
    metrics = train(smoke_cfg(attribute_data, tmp_path / "kl", "loss=grpo", "grpo.max_new_tokens=4", "grpo.group_size=2",
                              "model.llm.finetune=lora", "trainer.max_steps=2", "trainer.save_steps=0",
                              "target.instructions=attributes"))  # fmt: skip
    assert all(s["train/kl_to_reference"] >= 0 and 0 <= s["train/reward"] <= 1 for s in metrics["steps"])
    # The reference policy is the model without its LoRA: a frozen or fully tuned LLM has none.
    with pytest.raises(ConfigError, match="grpo.kl_weight > 0 needs the reference policy"):
        train(smoke_cfg(attribute_data, tmp_path / "none", "loss=grpo", "target.instructions=attributes"))
