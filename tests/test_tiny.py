"""Tiny random models: they save, reload through `speechllm.sources`, tokenize anything and generate."""

import hashlib

import numpy as np
import pytest
import torch

from speechllm.sources import load_llm, load_whisper
from speechllm.tiny import make_tiny_audio_classifier, make_tiny_llm, make_tiny_whisper


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_llm_chat_template_and_generate(tiny_llm_source):
    model, tok = load_llm(tiny_llm_source)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What can you hear?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat can you hear?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 4
    # Special tokens in content are single ids (the template's markers are not split into bytes).
    assert tok("<|im_start|>", add_special_tokens=False).input_ids == [
        tok.convert_tokens_to_ids("<|im_start|>")
    ]


@pytest.mark.parametrize("text", ["Héllo wörld 😀 naïve café", "数字 12345\n\ttabs", "  two  spaces "])
def test_tiny_llm_tokenizer_roundtrips_any_text(tiny_llm_source, text):
    _, tok = load_llm(tiny_llm_source)
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    # No bos/eos added silently to plain text (the chat template owns the markers).
    assert tok(text).input_ids == ids


def test_tiny_llm_loss_and_backward(tiny_llm_source):
    model, tok = load_llm(tiny_llm_source)
    batch = tok(["the speaker is a woman", "hi"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_tiny_builders_are_deterministic(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_tiny_llm(tmp_path / name, seed=seed)
    for name in ("model.safetensors", "tokenizer.json"):
        assert _digest(tmp_path / "a" / name) == _digest(tmp_path / "b" / name)
    assert _digest(tmp_path / "a" / "model.safetensors") != _digest(tmp_path / "c" / "model.safetensors")
    make_tiny_whisper(tmp_path / "w1")
    make_tiny_whisper(tmp_path / "w2")
    assert _digest(tmp_path / "w1" / "model.safetensors") == _digest(tmp_path / "w2" / "model.safetensors")


def test_tiny_whisper_processor_and_generate(tiny_whisper_source):
    model, processor = load_whisper(tiny_whisper_source)
    assert model.config.d_model == 64 and model.config.num_mel_bins == 80
    assert model.config.max_source_positions == 1500
    audio = np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32)
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 80, 3000)
    ids = model.generate(features, max_new_tokens=3)
    assert ids.shape[0] == 1 and 1 <= ids.shape[1] <= 3 + 2
    assert isinstance(processor.batch_decode(ids, skip_special_tokens=True)[0], str)
    # The English-only prompt: <|startoftranscript|><|notimestamps|> text <|endoftext|>.
    tok = processor.tokenizer
    labels = tok("Hello world.").input_ids
    assert tok.convert_ids_to_tokens(labels[:2]) == ["<|startoftranscript|>", "<|notimestamps|>"]
    assert labels[-1] == tok.eos_token_id and tok.decode(labels, skip_special_tokens=True) == "Hello world."
    assert len(tok) == model.config.vocab_size


def test_tiny_whisper_encoder_accepts_training_step(tiny_whisper_source):
    model, processor = load_whisper(tiny_whisper_source)
    features = torch.randn(2, 80, 3000)
    labels = processor.tokenizer(["a b", "c"], return_tensors="pt", padding=True).input_ids
    out = model(input_features=features, labels=labels)
    assert torch.isfinite(out.loss)


def test_tiny_audio_classifier(tmp_path):
    from transformers import pipeline

    path = make_tiny_audio_classifier(tmp_path / "clf", ["female", "male"])
    clf = pipeline("audio-classification", model=path, device="cpu")
    audio = np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32)
    scores = clf({"raw": audio, "sampling_rate": 16000})
    assert {s["label"] for s in scores} == {"female", "male"}
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="unique"):
        make_tiny_audio_classifier(tmp_path / "bad", ["a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        make_tiny_audio_classifier(tmp_path / "bad", [])
