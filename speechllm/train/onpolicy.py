"""On-policy losses: the speech model trains on answers it samples itself.

Self-output (DeSTA2) is on-policy for the text LLM but off-policy for the speech model: its targets were
written once, by the LLM reading text. The two losses here sample from the speech model at every step.

`opd`, on-policy distillation (X-OPD, arXiv 2603.24596; GKD): each speech row's answer is sampled from the
speech model reading the audio; the frozen LLM reading the clip's description (the teacher of `kd`) scores
the same tokens; the loss is the reverse KL(student || teacher) on every sampled position, computed over the
full next-token distribution (not the single-sample estimate log p_s(y) - log p_t(y), whose variance is
far larger at a 49k vocabulary). Replay rows keep cross-entropy.

`grpo` (DeepSeekMath's group-relative policy optimisation, as TRL's GRPOTrainer computes it): for each
attribute question, `group_size` answers are sampled; each is rewarded by the evaluation's parser against
the clip's labels (right, wrong, silent or hedging, `speechllm.data.verify`); advantages are the rewards
less the group mean, over the group's standard deviation. One policy-gradient step per batch of samples
(so the importance ratio is 1 and PPO's clipping never binds), token-level loss normalisation (DAPO, TRL's
default), and a per-token KL penalty to the reference policy, the same speech model with its LoRA switched
off (TRL's k3 estimator: exp(r) - r - 1, r = log p_ref - log p). Rows the labels cannot check (content
questions, replay) keep cross-entropy.

TRL's GRPOTrainer is not used: it builds its prompts from text and calls `model.generate(input_ids)`, while
SpeechLM needs the clip's encoder features beside the prompt; its loss lives inside the trainer. The few
lines of the loss are written here, in our Trainer subclass, against TRL's definitions.

Sampled answers are trained on as their token ids (`target_ids`, appended to the generation prompt as
sampled, the ending token included when one was sampled), for the student and the teacher alike: decoded
text put back through the tokenizer can give other tokens than those sampled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from speechllm.config import ConfigError
from speechllm.data.instructions import asked_attributes
from speechllm.data.verify import _asserts_several
from speechllm.parsing import parse_label
from speechllm.train.losses import token_kl

OUTCOMES = ("right", "wrong", "silent", "hedging")


@dataclass
class OPDConfig:
    """`opd`: on-policy distillation from the LLM reading the description (used when `loss=opd`).

    Attributes:
        max_new_tokens: longest sampled answer.
        temperature: sampling temperature of the student's answers.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0

    def check(self) -> None:
        if self.max_new_tokens < 1 or self.temperature <= 0:
            raise ConfigError("opd.max_new_tokens must be >= 1 and opd.temperature > 0")


@dataclass
class GRPOConfig:
    """`grpo`: group-relative policy optimisation with label-checked rewards (used when `loss=grpo`).

    Attributes:
        group_size: answers sampled per attribute question (G).
        max_new_tokens: longest sampled answer.
        temperature: sampling temperature.
        kl_weight: weight of the per-token KL to the reference policy (the model without LoRA); 0: none.
        rewards: reward per outcome of an answer: right, wrong, silent (states no class), hedging (states two).
    """

    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    kl_weight: float = 0.04
    rewards: dict[str, float] = field(
        default_factory=lambda: {"right": 1.0, "wrong": 0.0, "silent": 0.0, "hedging": 0.0}
    )

    def check(self) -> None:
        if self.group_size < 2:
            raise ConfigError(
                f"grpo.group_size={self.group_size}: advantages need at least 2 answers per group"
            )
        if self.max_new_tokens < 1 or self.temperature <= 0 or self.kl_weight < 0:
            raise ConfigError(
                "grpo.max_new_tokens must be >= 1, grpo.temperature > 0 and grpo.kl_weight >= 0"
            )
        if sorted(self.rewards) != sorted(OUTCOMES):
            raise ConfigError(
                f"grpo.rewards needs exactly the outcomes {list(OUTCOMES)}; got {sorted(self.rewards)}"
            )


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) per position, over the full next-token distribution.

    Shapes: (n, vocab), (n, vocab) -> (n,).
    """
    return token_kl(student_logits, teacher_logits)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Rewards less their group's mean, over the group's standard deviation (TRL's `scale_rewards="group"`).

    A group whose answers all earned the same reward has zero advantage: it teaches nothing.

    Shapes: (groups, group_size) -> (groups, group_size).
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def grpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              kl_weight: float) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """GRPO's token-level loss for one on-policy step.

    Args:
        logp: log-probability of each sampled token under the policy (with gradient).
        ref_logp: the same under the reference policy (None when `kl_weight` is 0).
        advantages: each token's answer's advantage.
        kl_weight: beta.

    Returns:
        (summed loss over tokens, parts): the caller divides by the batch's token count. `parts` holds the
        summed `kl` (detached).

    Shapes: logp, ref_logp, advantages (tokens,).
    """
    # exp(logp - logp.detach()) is 1 with the policy-gradient's gradient: PPO's ratio at the sampling policy.
    ratio = torch.exp(logp - logp.detach())
    loss = -(ratio * advantages).sum()
    kl = logp.new_zeros(())
    if ref_logp is not None and kl_weight:
        r = ref_logp - logp
        kl = (torch.exp(r) - r - 1).sum()
        loss = loss + kl_weight * kl
    return loss, {"kl": float(kl.detach())}


def answer_outcome(answer: str, labels: dict[str, str], task: str, classes: tuple[str, ...]) -> str:
    """How an answer to a question about `task` fares against the clip's label: right, wrong, silent or
    hedging (the evaluation's parser; a hedge states two classes, as verification judges it)."""
    parsed = parse_label(answer, task, classes)
    if parsed is None:
        return "silent"
    if _asserts_several(answer, task, classes):
        return "hedging"
    return "right" if parsed == labels[task] else "wrong"


def checkable_task(row: dict, classes: dict[str, tuple[str, ...]]) -> str | None:
    """The one labelled attribute a speech row's instruction asks about, or None (content questions, rows
    without labels, questions about several attributes)."""
    if row.get("kind") != "speech" or not row.get("clip_labels"):
        return None
    labels = json.loads(row["clip_labels"])
    asked = [a for a in asked_attributes(row.get("instruction") or "") if a in classes and labels.get(a)]
    return asked[0] if len(asked) == 1 else None
