"""Token filtering: per-token probabilities under the base LLM, keep masks and the masked fraction."""

import json
import logging

import pytest
import torch
from test_targets import CFG, described_rows, load, make_talky_llm

from speechllm.data.targets import build_targets, target_config
from speechllm.data.token_filter import add_keep_masks, keep_mask, masked_fraction
from speechllm.textllm import chat_prompt, description_messages, target_token_probs


@pytest.fixture(scope="module")
def talky(tiny_llm_source, tmp_path_factory):
    return load(make_talky_llm(tiny_llm_source, tmp_path_factory.mktemp("talky")))


def direct_probs(model, tok, prompt: str, target: str) -> list[float]:
    """One sequence, no batching or padding: softmax of the logits at each position before a target token."""
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    t_ids = tok(target, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + t_ids])).logits[0]
    probs = torch.softmax(logits.float(), dim=-1)
    return [probs[len(p_ids) - 1 + k, t].item() for k, t in enumerate(t_ids)]


def test_probs_and_mask_match_a_direct_computation(talky):
    model, tok = talky
    rows = [
        {
            "description": "A woman says hello.",
            "instruction": "What can you hear?",
            "target": "A woman says hello.",
        },
        {
            "description": "A man speaks " + "slowly " * 9,
            "instruction": "Describe it.",
            "target": "He speaks slowly",
        },
        {
            "description": "Noise.",
            "instruction": "Tell me about this audio.",
            "target": "Just noise, nothing else!",
        },
    ]
    prompts = [chat_prompt(tok, description_messages(r["description"], r["instruction"])) for r in rows]
    expected = [direct_probs(model, tok, p, r["target"]) for p, r in zip(prompts, rows, strict=True)]
    # A threshold inside the observed range, so the masks hold both kept and masked tokens.
    # (midway between two neighbours, so float noise cannot flip a token at the boundary).
    ordered = sorted(p for ps in expected for p in ps)
    threshold = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    scored = target_token_probs(model, tok, prompts, [r["target"] for r in rows], batch_size=3)
    add_keep_masks(rows, model, tok, threshold=threshold, batch_size=2)
    any_kept = any_masked = False
    for row, want, (ids, probs) in zip(rows, expected, scored, strict=True):
        assert ids == tok(row["target"], add_special_tokens=False).input_ids == row["target_token_ids"]
        assert probs == pytest.approx(want, abs=1e-5)
        assert row["keep_mask"] == [int(p >= threshold) for p in want]
        any_kept |= 1 in row["keep_mask"]
        any_masked |= 0 in row["keep_mask"]
    assert any_kept and any_masked


def test_keep_mask_threshold_edges():
    assert keep_mask([0.4, 0.39999, 1.0, 0.0]) == [1, 0, 1, 0]
    assert keep_mask([0.2, 0.9], threshold=0.0) == [1, 1]
    with pytest.raises(ValueError, match="threshold"):
        keep_mask([0.5], threshold=1.5)
    assert masked_fraction([[1, 0, 0], [1]]) == {"tokens": 4, "masked": 2, "masked_fraction": 0.5}
    assert masked_fraction([])["masked_fraction"] == 0.0
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        target_token_probs(None, None, ["a", "b"], ["x"])


@pytest.mark.parametrize("mode", ["self_output", "label"])
def test_stage_reports_masked_fraction(talky, tmp_path, caplog, mode):
    model, tok = talky
    cfg = target_config({**CFG, "mode": mode, "token_filter": {"enabled": True, "threshold": 0.05}})
    with caplog.at_level(logging.INFO, logger="speechllm.data.targets"):
        ds = build_targets(described_rows(6), tmp_path / mode, cfg, model=model, tokenizer=tok)
    stats = json.loads((tmp_path / mode / "_stats.json").read_text())
    assert stats["mode"] == mode and stats["token_filter_threshold"] == 0.05
    assert stats == {**stats, **masked_fraction(ds["keep_mask"])}
    assert stats["tokens"] == sum(len(r["target_token_ids"]) for r in ds) > 0
    assert any("target tokens masked" in r.getMessage() for r in caplog.records)
    # Each stored mask is the direct computation for that row's context and target.
    row = ds[0]
    prompt = chat_prompt(tok, description_messages(row["description"], row["instruction"]))
    assert row["keep_mask"] == [int(p >= 0.05) for p in direct_probs(model, tok, prompt, row["target"])]


def test_filter_off_adds_no_columns(talky, tmp_path):
    model, tok = talky
    ds = build_targets(described_rows(3), tmp_path / "off", target_config(CFG), model=model, tokenizer=tok)
    assert "keep_mask" not in ds.column_names
    assert "masked_fraction" not in json.loads((tmp_path / "off" / "_stats.json").read_text())
