"""Training losses: cross-entropy on target tokens (DeSTA2) and distillation from the text LLM (`kd`).

`kd` (ultravox-style): the teacher is the frozen text LLM reading the clip's *description* (the chat of
`speechllm.textllm.description_messages`) followed by the same target; the student is the speech
model reading the audio. On every target token the student's next-token distribution is pulled
towards the teacher's with KL(teacher || student). Both sides tokenize the target the same way
(`tokenizer(target, add_special_tokens=False)` plus the end-of-turn token), so their labelled positions
pair up one to one. Text-only replay rows have no description; they keep plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align next-token logits with the labels they predict.

    Shapes:
        logits (batch, seq, vocab), labels (batch, seq) -> (batch, seq-1, vocab), (batch, seq-1).
    """
    return logits[:, :-1], labels[:, 1:]


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy (0 where the label is ignored).

    Shapes:
        logits (batch, seq, vocab), labels (batch, seq) -> (batch, seq-1).
    """
    lg, lb = shifted_targets(logits, labels)
    ce = F.cross_entropy(lg.float().transpose(1, 2), lb.clamp_min(0), reduction="none")
    return ce * (lb != IGNORE_INDEX)


def token_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per position over the full next-token distribution (in float32).

    Shapes: (n, vocab), (n, vocab) -> (n,).
    """
    p_logp = F.log_softmax(p_logits.float(), dim=-1)
    return (p_logp.exp() * (p_logp - F.log_softmax(q_logits.float(), dim=-1))).sum(-1)


def kd_loss(student_logits: torch.Tensor, student_labels: torch.Tensor, student_rows: torch.Tensor,
            teacher_logits: torch.Tensor, teacher_labels: torch.Tensor, *, temperature: float = 1.0,
            ce_weight: float = 0.0) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Token-averaged loss: KL to the teacher on speech rows' target tokens, CE on the other rows.

    Args:
        student_logits: the speech model's logits for the whole batch.
        student_labels: its labels (-100 off the target tokens).
        student_rows: indices of the batch rows that have a teacher row (in teacher order).
        teacher_logits: the text LLM's logits on the description prompts.
        teacher_labels: labels of the teacher batch (same target tokens, -100 elsewhere).
        temperature: softmax temperature; the KL is scaled by T^2 so gradients keep their size.
        ce_weight: weight of CE added on the distilled tokens.

    Returns:
        (loss, parts): parts holds detached `kl`, `ce` means for logging.

    Shapes:
        student_logits (batch, seq, vocab), student_labels (batch, seq), student_rows (k,),
        teacher_logits (k, tseq, vocab), teacher_labels (k, tseq).

    Raises:
        ValueError: a student row and its teacher row label different numbers of tokens.
    """
    ce_all = token_ce(student_logits, student_labels)  # (batch, seq-1)
    s_lg, s_lb = shifted_targets(student_logits, student_labels)
    t_lg, t_lb = shifted_targets(teacher_logits, teacher_labels)
    distilled = torch.zeros(student_labels.shape[0], dtype=torch.bool, device=student_labels.device)
    distilled[student_rows] = True
    s_sel, t_sel = [], []
    for k, row in enumerate(student_rows.tolist()):
        s_pos = (s_lb[row] != IGNORE_INDEX).nonzero().squeeze(1)
        t_pos = (t_lb[k] != IGNORE_INDEX).nonzero().squeeze(1)
        if len(s_pos) != len(t_pos):
            raise ValueError(
                f"kd: batch row {row} labels {len(s_pos)} tokens but its description prompt labels "
                f"{len(t_pos)}; kd needs both to train on the same target tokens (turn token filtering off)"
            )
        s_sel.append(s_lg[row, s_pos])
        t_sel.append(t_lg[k, t_pos])
    n_kd = sum(len(x) for x in s_sel)
    kl_sum = student_logits.new_zeros((), dtype=torch.float32)
    if n_kd:
        s = torch.cat(s_sel).float() / temperature
        t = torch.cat(t_sel).float() / temperature
        kl = token_kl(t, s) * temperature**2
        kl_sum = kl.sum()
    kd_ce_sum = ce_all[distilled].sum()
    other_ce_sum = ce_all[~distilled].sum()
    n_other = int((s_lb[~distilled] != IGNORE_INDEX).sum())
    total_tokens = max(n_kd + n_other, 1)
    loss = (kl_sum + ce_weight * kd_ce_sum + other_ce_sum) / total_tokens
    parts = {
        "kl": float(kl_sum.detach()) / max(n_kd, 1),
        "ce": float((kd_ce_sum + other_ce_sum).detach()) / total_tokens,
    }
    return loss, parts
