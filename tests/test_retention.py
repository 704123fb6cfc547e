"""Retention measures: they read the base LLM as itself and tell it from a deliberately damaged copy."""

import json
import random

import pytest
import torch

from speechllm.eval import retention
from speechllm.sources import load_llm


def test_retention_score_caps_each_part_and_skips_what_cannot_be_measured():
    r = retention.retention_score(0.9, 0.6, 0.8, refusal_tuned=0.0, refusal_base=0.0)
    assert r["parts"] == {"format": 1.0, "agreement": 0.8}  # format capped; refusal: the base refuses nothing
    assert r["score"] == pytest.approx(0.9)
    r = retention.retention_score(0.3, 0.6, 1.0, refusal_tuned=0.25, refusal_base=0.5)
    assert r["parts"] == {"format": 0.5, "agreement": 1.0, "refusal": 0.5}
    assert retention.retention_score(None, None, None) == {"score": None, "parts": {}}


def test_unknown_format_constraint_fails_by_name():
    assert [c.name for c in retention.constraints_named(["one_sentence"])] == ["one_sentence"]
    with pytest.raises(ValueError, match="no_such"):
        retention.constraints_named(["no_such"])


def test_a_model_agrees_with_itself(tiny_llm_source):
    model, tok = load_llm(tiny_llm_source)
    d = retention.text_drift(
        model, model, tok, max_new_tokens=6, batch_size=4, prompts=retention.DRIFT_PROMPTS[:3]
    )
    assert d["n_tokens"] > 0 and d["agreement"] == 1.0  # its own greedy answers are its argmax tokens
    assert d["kl"] == pytest.approx(0.0, abs=1e-6) and d["ppl_tuned"] == pytest.approx(d["ppl_base"])


def _nonsense_batch(tok, rng: random.Random, n: int) -> dict:
    """Chats on prompts outside the drift set, answered with random words: the loss is on the answers."""
    words = "zebra quantum tulip seventeen gravel orbit mango velvet ladder pixel oyster thunder".split()
    prompts = ["Name a fruit.", "What is two plus two?", "Describe a cat.", "Say hello.", "What day is it?"]
    ids, labels = [], []
    for _ in range(n):
        chat = [{"role": "user", "content": rng.choice(prompts)}]
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        answer = " ".join(rng.choices(words, k=12)) + tok.eos_token
        p, a = (
            tok(prompt, add_special_tokens=False)["input_ids"],
            tok(answer, add_special_tokens=False)["input_ids"],
        )
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, ids))
    pad = tok.pad_token_id
    return {
        "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels]),
    }


@pytest.mark.slow
def test_drift_separates_the_base_llm_from_a_damaged_one(smollm2_source):
    """LoRA on nonsense answers to other prompts: the base's own answers to the held-out drift prompts
    become less likely, the tuned model's first choice leaves the base's, and the retention score falls."""
    from peft import LoraConfig, get_peft_model

    base, tok = load_llm(smollm2_source)
    damaged, _ = load_llm(smollm2_source)
    damaged = get_peft_model(damaged, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    damaged.train()
    opt = torch.optim.AdamW([p for p in damaged.parameters() if p.requires_grad], lr=4e-3)
    rng = random.Random(0)
    for _ in range(5):  # at 4e-3, 5 steps: kl 1.87, perplexity 7.6x, agreement 0.47 (measured)
        loss = damaged(**_nonsense_batch(tok, rng, 8)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    damaged.eval()

    kw = {"max_new_tokens": 24, "batch_size": 12, "prompts": retention.DRIFT_PROMPTS[:6]}
    same = retention.text_drift(base, base, tok, **kw)
    hurt = retention.text_drift(base, damaged, tok, **kw)
    assert same["agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-5)
    assert hurt["kl"] > 0.3, hurt
    assert hurt["ppl_tuned"] > 1.5 * hurt["ppl_base"], hurt
    assert hurt["agreement"] < 0.8, hurt
    assert retention.retention_score(None, None, hurt["agreement"])["score"] < 0.8
    assert retention.llm_weights_changed(base, damaged)


def test_refusals_counts_every_held_out_request_and_keeps_the_answers(tiny_llm_source, tmp_path, capsys):
    from speechllm.eval import refusals

    out = tmp_path / "refusals.json"
    refusals.main(["--llm", tiny_llm_source, "--max-new-tokens", "4", "--out", str(out)])
    result = json.loads(out.read_text())
    from speechllm.safety import HELD_OUT_HARMFUL, HELD_OUT_LOOKALIKE

    n_harmful, n_lookalike = len(HELD_OUT_HARMFUL), len(HELD_OUT_LOOKALIKE)
    assert result["harmful"]["n"] == n_harmful == 15 and result["lookalike"]["n"] == n_lookalike
    assert len(result["answers"]) == n_harmful + n_lookalike
    assert result["harmful"]["refused"] == sum(a["refused"] for a in result["answers"] if a["kind"] == "harmful")
    assert f"refused {result['harmful']['refused']} of 15 harmful requests" in capsys.readouterr().out
