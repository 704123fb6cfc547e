"""Text replay: Magpie self-chats, safety demonstrations, experience sampling, replay configs."""

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_targets import load, make_talky_llm
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from speechllm.data.replay import (
    build_experience,
    build_magpie,
    build_safety,
    instruction_reject_reason,
    judge_safety,
    replay_config,
    run_replay,
    user_turn_prefix,
)
from speechllm.data.stage import read_rejects
from speechllm.safety import (
    HARMFUL_REQUESTS,
    HELD_OUT_HARMFUL,
    HELD_OUT_LOOKALIKE,
    LOOKALIKE_REQUESTS,
    is_refusal,
)
from speechllm.textllm import Generation, LazyLLM

CONF = Path(__file__).resolve().parents[1] / "conf" / "replay"


@pytest.fixture(scope="module")
def talky(tiny_llm_source, tmp_path_factory):
    path = make_talky_llm(tiny_llm_source, tmp_path_factory.mktemp("talky"))
    return (path, *load(path))


def test_user_turn_prefix(talky):
    _, _, tok = talky
    assert user_turn_prefix(tok) == "<|im_start|>user\n"
    assert (
        user_turn_prefix(tok, system="Be brief.")
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    )


def test_magpie_rows_are_distinct_complete_chats(talky, tmp_path):
    _, model, tok = talky
    cfg = replay_config(
        {
            "magpie": {
                "size": 6,
                "oversample": 3.0,
                "chunk_size": 6,
                "instruction": {"max_new_tokens": 16},
                "answer": {"max_new_tokens": 16},
                "answer_on_truncated": "drop",  # keep only answers that ended with an end-of-turn
            }
        }
    )
    ds = build_magpie(tmp_path / "magpie", cfg, llm=LazyLLM(cfg.llm, None, model, tok))
    assert 0 < len(ds) <= 6
    users = [m[0]["content"] for m in ds["messages"]]
    assert len({u.lower() for u in users}) == len(users)
    prefix = user_turn_prefix(tok)
    for row in ds:
        (user, assistant) = row["messages"]
        assert user["role"] == "user" and user["content"].strip() and not user["content"].endswith(":")
        assert assistant["role"] == "assistant" and assistant["content"].strip()
        assert row["replay_source"] == "magpie" and row["replay_llm"]
        # The answer was generated from exactly this chat (the prefix's template, this user turn).
        assert row["replay_prompt"] == f"{prefix}{user['content']}<|im_end|>\n<|im_start|>assistant\n"
        assert json.loads(row["replay_generation"])["instruction"]["temperature"] == 1.1
    # Every attempt is either kept or skipped with a counted reason.
    stats = json.loads((tmp_path / "magpie" / "_stats.json").read_text())
    assert stats["attempts"] == 18
    assert sum(stats["skipped"].values()) + len(ds) == 18
    assert set(stats["skipped"]) <= {
        "instruction hit max_new_tokens",
        "empty instruction",
        "instruction ends with a colon",
        "duplicate instruction",
        "answer hit max_new_tokens",
        "empty answer",
        "beyond replay.magpie.size=6",
    }


def test_magpie_instruction_filters():
    seen = {"what is the capital of france?"}
    assert instruction_reject_reason(Generation("Tell me a joke", 4, truncated=True), seen) == (
        "instruction hit max_new_tokens"
    )
    assert instruction_reject_reason(Generation("  ", 1, False), seen) == "empty instruction"
    assert instruction_reject_reason(Generation("Summarize this text:", 5, False), seen) == (
        "instruction ends with a colon"
    )
    assert instruction_reject_reason(Generation("What is the  capital of France?", 8, False), seen) == (
        "duplicate instruction"
    )
    assert instruction_reject_reason(Generation("Name three rivers.", 4, False), seen) is None


class ScriptedLM(torch.nn.Module):
    """A stand-in LM whose `generate` answers each request with a scripted text (then end-of-turn).

    It lets the test decide which answers are refusals, so the safety filter is checked on both kinds
    of answer for both kinds of request.
    """

    def __init__(self, tokenizer, answers: dict[str, str]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate_texts reads the device from here
        self.tok, self.answers = tokenizer, answers
        self.prompts: list[str] = []

    def forward(self, **_):
        # Requests that share a prefix (the system turn) have it run first; this LM keeps no cache.
        return CausalLMOutputWithPast(cache=DynamicCache())

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **_):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = self.tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
            self.prompts.append(prompt)
            answer = next(a for q, a in self.answers.items() if q in prompt)
            new = self.tok(answer, add_special_tokens=False).input_ids + [eos_token_id[-1]]
            rows.append(ids + new)
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


def test_safety_keeps_only_refusals_and_helpful_lookalikes(talky, tmp_path):
    _, _, tok = talky
    refuse, comply = "I'm sorry, but I can't help with that.", "Sure. First, open the terminal."
    # Alternate: even harmful requests get refused, odd ones get answered; look-alikes the other way.
    answers = {q: (refuse if i % 2 == 0 else comply) for i, q in enumerate(HARMFUL_REQUESTS[:6])}
    answers |= {q: (comply if i % 2 == 0 else refuse) for i, q in enumerate(LOOKALIKE_REQUESTS[:6])}
    model = ScriptedLM(tok, answers)
    cfg = replay_config({"safety": {"harmful": 6, "lookalike": 6}})
    ds = build_safety(tmp_path / "safety", cfg, llm=LazyLLM(cfg.llm, None, model, tok))

    kept = {row["messages"][0]["content"]: row for row in ds}
    assert set(kept) == set(HARMFUL_REQUESTS[0:6:2]) | set(LOOKALIKE_REQUESTS[0:6:2])
    for row in ds:
        answer = row["messages"][-1]["content"]
        assert is_refusal(answer) == (row["replay_kind"] == "harmful")
        # The safety system prompt steered generation but is not part of the stored chat.
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert "harmless" in row["replay_prompt"]
    reasons = sorted(r["reason"] for r in read_rejects(tmp_path / "safety"))
    assert (
        reasons
        == ["harmful request not refused"] * 3 + ["safe request refused (would teach over-refusal)"] * 3
    )
    stats = json.loads((tmp_path / "safety" / "_stats.json").read_text())
    assert stats["kept"] == {"harmful": 3, "lookalike": 3} and stats["asked"] == 12


def test_refusal_matcher():
    assert is_refusal("I\u2019m sorry, I cannot do that.")
    assert is_refusal("That would be illegal, so I won't explain it.")
    assert judge_safety("harmful", "As an AI, I must decline.") is None
    assert not is_refusal("To kill a process, run `kill -9 PID`.")
    assert judge_safety("lookalike", "Use the kill command with the process id.") is None
    assert judge_safety("harmful", "Here are the steps.") == "harmful request not refused"


def test_experience_sampling(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(5)
    ]
    records += [
        {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"prompt": "Name a colour.", "response": "Blue."},
        {"text": "not a chat"},
        {"messages": [{"role": "user", "content": "unanswered"}]},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = replay_config({"build": ["experience"], "experience": {"path": str(path), "size": 100}})
    ds = build_experience(tmp_path / "experience", cfg)
    assert len(ds) == 8 and len(read_rejects(tmp_path / "experience")) == 2
    assert {"role": "user", "content": "Add 2 and 2."} in [m[0] for m in ds["messages"]]
    assert all(m[-1]["role"] == "assistant" for m in ds["messages"])
    small = replay_config({"experience": {"path": str(path), "size": 3, "seed": 1}})
    a = build_experience(tmp_path / "e1", small)["replay_id"]
    assert list(a) == list(build_experience(tmp_path / "e2", small)["replay_id"])
    with pytest.raises(ValueError, match="experience.path is not set"):
        build_experience(tmp_path / "e3", replay_config({}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_experience(
            tmp_path / "e4", replay_config({"experience": {"path": str(tmp_path / "nope.jsonl")}})
        )


def test_replay_configs_validate():
    for path in CONF.glob("*.yaml"):
        node = OmegaConf.load(path)
        node.pop("defaults", None)
        replay_config(OmegaConf.merge(OmegaConf.load(CONF / "default.yaml"), node))
    with pytest.raises(ValueError, match="sise"):
        replay_config({"magpie": {"sise": 3}})
    with pytest.raises(ValueError, match="unknown source 'magpy'"):
        replay_config({"build": ["magpy"]})
    for bad, message in [
        ({"safety": {"harmful": -1}}, "replay.safety.harmful=-1"),
        ({"experience": {"size": -5}}, "replay.experience.size=-5"),
        ({"magpie": {"instruction": {"temperature": 0.0}}}, "replay.magpie.instruction: temperature=0.0"),
        ({"ratio": 1.5}, "replay.ratio=1.5 is outside [0, 1)"),  # prepare refuses it too, not only training
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            replay_config(bad)


def test_run_replay_from_config(talky, tmp_path):
    path, _, _ = talky
    cfg = OmegaConf.create(
        {
            "paths": {"data_dir": str(tmp_path)},
            "seed": 0,
            "shard": "0/1",
            "replay": {
                "llm": path,
                "build": ["magpie", "safety"],
                "magpie": {
                    "size": 2,
                    "chunk_size": 4,
                    "instruction": {"max_new_tokens": 12},
                    "answer": {"max_new_tokens": 8},
                },
                "safety": {"harmful": 2, "lookalike": 2, "answer": {"max_new_tokens": 8}},
            },
        }
    )
    out = run_replay(cfg)
    assert set(out) == {"magpie", "safety"}
    for name in out:
        assert (tmp_path / "replay" / name / "_complete.json").exists()
        assert (tmp_path / "replay" / name / "_stats.json").exists()


def test_sympathy_alone_is_not_a_refusal():
    # Seen from SmolLM2-135M: an opener that goes on to engage with the request.
    assert not is_refusal("I'm sorry for your loss. If you're looking for a way to do it, I'm here to help.")
    assert is_refusal("I'm sorry for any confusion, but I'm unable to help with that.")


def _content_words(text: str) -> set[str]:
    generic = set(
        "the and for how can what which who why when where does with without into from that this your you them "
        "they their there about give tell write make help explain best way get someone something using use own "
        "like just show list plan step steps home house".split()
    )
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in generic}


def test_held_out_safety_requests_are_not_the_training_requests():
    """The evaluation's harmful requests are other harms than safety replay trains on (no content word in
    common with a training harmful request); any other pair shares at most one word (an alarming word
    such as "fire" or "kill", in another sense)."""
    for held in HELD_OUT_HARMFUL:
        for train in HARMFUL_REQUESTS:
            assert not _content_words(held) & _content_words(train), (held, train)
    for held in HELD_OUT_HARMFUL + HELD_OUT_LOOKALIKE:
        for train in HARMFUL_REQUESTS + LOOKALIKE_REQUESTS:
            assert len(_content_words(held) & _content_words(train)) <= 1, (held, train)
