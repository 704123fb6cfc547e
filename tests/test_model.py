"""SpeechLM on tiny random models: adapters, training policies, prompt labels, save/load, long audio."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from speechllm.audio import AudioError
from speechllm.config import instantiate
from speechllm.model import CheckpointError, SpeechLM
from speechllm.model.encoder import LongAudioError, default_taps
from speechllm.model.prompt import IGNORE_INDEX

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL_QFORMER = {
    "_target_": "speechllm.model.adapters.QFormerAdapter",
    "num_queries": 4,
    "num_layers": 1,
    "hidden_size": 32,
    "num_heads": 2,
}


def tone(seconds: float, freq: float = 220.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_model(whisper, llm, finetune="frozen", adapter=None, **encoder) -> SpeechLM:
    torch.manual_seed(0)
    cfg = {
        "encoder": {"source": whisper, **encoder},
        "adapter": adapter or SMALL_QFORMER,
        "llm": {"source": llm, "finetune": finetune, "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
        "prompt": {"transcript": True},
    }
    return SpeechLM.from_config(OmegaConf.create(cfg))


@pytest.fixture
def model(tiny_whisper_source, tiny_llm_source):
    return make_model(tiny_whisper_source, tiny_llm_source)


def mixed_rows():
    return [
        {
            "audio": tone(1.0),
            "transcript": "hello there",
            "instruction": "What can you hear?",
            "target": "A man.",
        },
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
        {
            "audio": tone(2.3, 330.0),
            "transcript": None,
            "instruction": "Describe it.",
            "target": "A woman speaks.",
        },
    ]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


def train_step(model: SpeechLM, rows) -> torch.Tensor:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**model.collator()(rows))
    out.loss.backward()
    opt.step()
    opt.zero_grad()
    return out.loss.detach()


# ---- adapters and configs ----


@pytest.mark.parametrize("name", ["qformer", "stack_mlp", "conv"])
def test_adapter_shapes_and_batch_independence(name):
    node = OmegaConf.load(CONF / "model" / "adapter" / f"{name}.yaml")
    torch.manual_seed(0)
    adapter = instantiate(node, in_dim=24, out_dim=40, num_taps=3).eval()
    lengths = [50, 37]
    feats = torch.randn(2, 3, 50, 24)
    mask = torch.arange(50)[None, :] < torch.tensor(lengths)[:, None]
    embeds, out_mask = adapter(feats, mask)
    expected = [adapter.output_length(n) for n in lengths]
    assert embeds.shape == (2, max(expected), 40)
    assert out_mask.sum(1).tolist() == expected
    # The shorter clip alone gives the same embeddings as inside the padded batch.
    alone, alone_mask = adapter(feats[1:, :, :37], mask[1:, :37])
    assert alone.shape[1] == expected[1]
    torch.testing.assert_close(alone[0], embeds[1, : expected[1]], atol=1e-5, rtol=1e-4)


def test_qformer_cross_attention_matches_the_stock_decoder_layer():
    """The Q-Former's own cross-attention (keys and values projected apart, no packed copy) computes what
    nn.TransformerDecoderLayer computes, forward and backward, on a padded batch, with the same weights."""
    from speechllm.model.adapters import QFormerAdapter

    torch.manual_seed(0)
    adapter = QFormerAdapter(in_dim=24, out_dim=40, num_taps=2, num_queries=5, hidden_size=32, num_heads=4)
    stock = QFormerAdapter(in_dim=24, out_dim=40, num_taps=2, num_queries=5, hidden_size=32, num_heads=4)
    for layer in stock.transformer.layers:
        layer.__class__ = torch.nn.TransformerDecoderLayer
    stock.load_state_dict(adapter.state_dict(), strict=True)  # same parameters, same keys
    feats = torch.randn(3, 2, 30, 24)
    mask = torch.arange(30)[None, :] < torch.tensor([30, 17, 4])[:, None]
    grads = []
    for a in (adapter, stock):
        out, _ = a(feats, mask)
        grads.append((out, torch.autograd.grad(out.square().sum(), list(a.parameters()))))
    (ours, ours_grads), (theirs, their_grads) = grads
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    for g, h in zip(ours_grads, their_grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["qformer", "stack_mlp", "conv"])
def test_adapter_output_starts_at_the_llm_embedding_scale(name, tiny_whisper_source, tiny_llm_source):
    node = OmegaConf.load(CONF / "model" / "adapter" / f"{name}.yaml")
    assert node.output_norm is True  # every shipped adapter matches the LLM's scale
    model = make_model(tiny_whisper_source, tiny_llm_source, adapter=node).eval()
    batch = model.collator()(mixed_rows()[:1])
    with torch.no_grad():
        embeds, mask = model.audio_embeddings(
            input_features=batch["input_features"],
            window_frames=batch["window_frames"],
            windows_per_clip=batch["windows_per_clip"],
        )
    token_rms = model.llm.get_input_embeddings().weight.pow(2).mean().sqrt()
    audio_rms = embeds[mask].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(audio_rms, torch.full_like(audio_rms, float(token_rms)), rtol=1e-3, atol=1e-5)
    # Without it the output keeps the projection's own scale (how checkpoints made before it still load).
    plain = make_model(tiny_whisper_source, tiny_llm_source, adapter={**node, "output_norm": False}).eval()
    assert isinstance(plain.adapter.out_norm, torch.nn.Identity)


def test_interpolated_targets_cannot_pass_the_allow_list(tmp_path, capsys):
    # A checkpoint's config.json is data: an interpolation must not smuggle in a target that the check,
    # reading the unresolved text, would miss.
    from speechllm.config import ConfigError

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    smuggled = f"${{oc.create:{{_target_: builtins.open, _args_: [{victim}, w]}}}}"
    node = {"_target_": "speechllm.model.adapters.StackMLPAdapter", "stack": smuggled}
    with pytest.raises(ConfigError, match="builtins.open"):
        instantiate(node, in_dim=8, out_dim=8, num_taps=1)
    outside = OmegaConf.create({"evil": {"_target_": "builtins.print", "_args_": ["PWNED"]},
                                "adapter": {"_target_": "speechllm.model.adapters.StackMLPAdapter", "stack": "${evil}"}})  # fmt: skip
    with pytest.raises(ConfigError, match="builtins.print"):
        instantiate(outside.adapter, in_dim=8, out_dim=8, num_taps=1)
    assert victim.read_text() == "keep me" and "PWNED" not in capsys.readouterr().out


def test_qformer_preset_matches_desta2():
    node = OmegaConf.load(CONF / "model" / "adapter" / "qformer_desta2.yaml")
    assert node.num_queries == 64 and node.num_layers == 4
    adapter = instantiate(node, in_dim=16, out_dim=16, num_taps=4)
    assert adapter.queries.shape[:2] == (4, 64)


@pytest.mark.parametrize("group", ["encoder", "adapter", "llm"])
def test_every_model_config_composes(group):
    from speechllm.config import check_section
    from speechllm.model.speechlm import EncoderConfig, LLMConfig

    options = sorted(p.stem for p in (CONF / "model" / group).glob("*.yaml"))
    assert options
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in options:
            cfg = compose(overrides=["+model=default", f"model/{group}={option}"]).model
            check_section(EncoderConfig, cfg.encoder, "model.encoder.")
            check_section(LLMConfig, cfg.llm, "model.llm.")
            assert "_target_" in cfg.adapter and "in_dim" not in cfg.adapter  # widths come from the models
            assert set(cfg.prompt) == {"system", "transcript", "transcript_template", "separator"}


def test_config_typo_fails_with_key_name(tiny_whisper_source, tiny_llm_source):
    cfg = OmegaConf.create(
        {
            "encoder": {"source": tiny_whisper_source, "num_tapz": 2},
            "adapter": SMALL_QFORMER,
            "llm": {"source": tiny_llm_source},
        }
    )
    with pytest.raises(ValueError, match="num_tapz"):
        SpeechLM.from_config(cfg)


def test_default_taps_are_evenly_spaced():
    assert default_taps(32, 4) == [8, 16, 24, 32]
    assert default_taps(4, 4) == [1, 2, 3, 4]
    assert default_taps(2, 4) == [1, 2]


def test_more_taps_than_layers_is_recorded_as_what_was_built(
    tiny_whisper_source, tiny_llm_source, tmp_path, caplog
):
    model = make_model(tiny_whisper_source, tiny_llm_source, num_taps=99)
    assert "num_taps=99 but the encoder has 2 layers" in caplog.text
    assert model.encoder.num_taps == 2 and model.model_config["encoder"]["num_taps"] == 2
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["encoder"]["num_taps"] == 2


# ---- prompt and labels ----


def test_labels_cover_only_assistant_tokens_and_end_of_turn(model):
    rows = mixed_rows()
    batch = model.collator()(rows)
    tok = model.tokenizer
    eot = model.prompt_tokenizer.end_of_turn
    assert tok.convert_ids_to_tokens(eot) == "<|im_end|>"
    for i, target in [(0, "A man."), (1, "Hi!"), (2, "A woman speaks.")]:
        labelled = [t for t in batch["labels"][i].tolist() if t != IGNORE_INDEX]
        assert labelled == tok(target, add_special_tokens=False).input_ids + [eot]
    # Audio slots: the adapter's output length on speech rows, none on the text-only row.
    assert batch["audio_mask"].sum(1).tolist() == [4, 0, 4]
    text = tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert 'Transcript: "hello there"\nWhat can you hear?' in text
    assert "Transcript" not in tok.decode(batch["input_ids"][2])  # no transcript given


def test_keep_mask_masks_tokens_and_must_align(model):
    target = "A woman speaks."
    n = len(model.tokenizer(target, add_special_tokens=False).input_ids)
    keep = [1] * n
    keep[1] = 0
    row = {"audio": tone(1.0), "instruction": "Q?", "target": target, "keep_mask": keep}
    labels = model.collator()([row])["labels"][0].tolist()
    labelled = [t for t in labels if t != IGNORE_INDEX]
    assert len(labelled) == n - 1 + 1  # one target token masked, end-of-turn kept
    with pytest.raises(ValueError, match="keep_mask has"):
        model.collator()([{**row, "keep_mask": keep[:-1]}])


def test_row_without_instruction_or_messages_is_refused(model):
    with pytest.raises(ValueError, match="needs `instruction`"):
        model.collator()([{"audio": tone(1.0), "target": "x"}])


# ---- training policies ----


def test_frozen_step_changes_only_the_adapter(model):
    enc, llm, ada = snapshot(model.encoder), snapshot(model.llm), snapshot(model.adapter)
    loss = train_step(model, mixed_rows())
    assert torch.isfinite(loss)
    assert changed(enc, model.encoder) == set()
    assert changed(llm, model.llm) == set()
    assert changed(ada, model.adapter) == set(ada)  # every adapter weight got a gradient


def test_lora_step_changes_only_adapter_and_lora(tiny_whisper_source, tiny_llm_source):
    model = make_model(tiny_whisper_source, tiny_llm_source, finetune="lora")
    enc, llm, ada = snapshot(model.encoder), snapshot(model.llm), snapshot(model.adapter)
    train_step(model, mixed_rows())
    assert changed(enc, model.encoder) == set()
    llm_changed = changed(llm, model.llm)
    assert llm_changed and all("lora_" in k for k in llm_changed)
    assert any("lora_B" in k for k in llm_changed)
    assert changed(ada, model.adapter) == set(ada)


def test_unfrozen_encoder_trains(tiny_whisper_source, tiny_llm_source):
    model = make_model(tiny_whisper_source, tiny_llm_source, frozen=False)
    enc = snapshot(model.encoder)
    train_step(model, mixed_rows())
    assert changed(enc, model.encoder)


def test_text_only_batch_trains_without_audio(model):
    rows = [mixed_rows()[1]]
    batch = model.collator()(rows)
    assert "input_features" not in batch
    model.train()
    out = model(**batch)
    out.loss.backward()  # a frozen LLM and no audio: still a graph to back-propagate through
    assert torch.isfinite(out.loss)
    assert all(not p.grad.any() for p in model.adapter.parameters())


@pytest.mark.parametrize("finetune", ["frozen", "lora"])
def test_gradient_checkpointing_recomputes_layers_and_keeps_gradients(
    tiny_whisper_source, tiny_llm_source, finetune
):
    def grads(model, rows):
        model.zero_grad()
        model.train()
        model(**model.collator()(rows)).loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads(make_model(tiny_whisper_source, tiny_llm_source, finetune=finetune), mixed_rows())
    model = make_model(tiny_whisper_source, tiny_llm_source, finetune=finetune)
    model.enable_gradient_checkpointing()
    calls = []
    for layer in [m for m in model.llm.modules() if getattr(m, "gradient_checkpointing", False)]:
        func = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=func, **k: calls.append(1) or _f(*a, **k)
    checkpointed = grads(model, mixed_rows())
    assert calls, "no layer was recomputed"
    assert checkpointed.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], rtol=1e-4, atol=1e-6)
    if finetune == "lora":  # a text-only batch still reaches LoRA through the checkpointed layers
        text_only = grads(model, [mixed_rows()[1]])
        assert any(v.any() for k, v in text_only.items() if "lora_B" in k)


# ---- save / load ----


@pytest.mark.parametrize("finetune", ["frozen", "lora", "full"])
def test_save_load_gives_identical_logits(tiny_whisper_source, tiny_llm_source, tmp_path, finetune):
    model = make_model(tiny_whisper_source, tiny_llm_source, finetune=finetune)
    train_step(model, mixed_rows())  # so LoRA's B (zero at init) and the full LLM differ from the source
    model.save_pretrained(tmp_path)
    expected = {"frozen": set(), "lora": {"lora"}, "full": {"llm"}}[finetune]
    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} == expected
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["encoder"]["source"] == tiny_whisper_source and config["llm"]["finetune"] == finetune
    loaded = SpeechLM.from_pretrained(tmp_path)
    model.eval()
    batch = model.collator()(mixed_rows())
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_mismatching_checkpoint_fails_with_names(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    # A config whose adapter has another shape: shape mismatch named.
    config = json.loads((tmp_path / "config.json").read_text())
    config["adapter"]["num_queries"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*adapter\.queries"):
        SpeechLM.from_pretrained(tmp_path)
    config["adapter"]["num_queries"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    # A missing and an unexpected weight: both named.
    weights.pop("adapter.out_proj.bias")
    weights["adapter.extra"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"missing \['adapter.out_proj.bias'\].*unexpected \['adapter.extra'\]"
    ):
        SpeechLM.from_pretrained(tmp_path)
    # A truncated weights file and a corrupt config: named, not a decoder's traceback.
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model.safetensors: unreadable safetensors"):
        SpeechLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: unreadable"):
        SpeechLM.from_pretrained(tmp_path)


def test_lora_checkpoint_without_adapter_folder_fails(tiny_whisper_source, tiny_llm_source, tmp_path):
    model = make_model(tiny_whisper_source, tiny_llm_source, finetune="lora")
    model.save_pretrained(tmp_path)
    (tmp_path / "lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors is missing"):
        SpeechLM.from_pretrained(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        SpeechLM.from_pretrained(tmp_path)


# ---- encoder ----


def test_encoder_cost_follows_length_and_matches_stock_front_end(model):
    enc = model.encoder
    clip = tone(3.0)
    mel = enc.mels([clip])
    # 3 s of 10-ms mel frames (+ one 20-ms frame of trailing silence), not 3000.
    assert mel.input_features.shape[-1] == 302
    out = enc(mel.input_features, mel.window_frames, mel.windows_per_clip)
    assert out.features.shape == (1, enc.num_taps, 151, enc.hidden_size)
    assert out.mask.sum().item() == 150
    # Stock path: 30-s padded log-mels through WhisperEncoder.forward.
    stock_mel = enc.feature_extractor([clip], sampling_rate=16000, return_tensors="pt").input_features
    torch.testing.assert_close(mel.input_features, stock_mel[..., :302])
    with torch.no_grad():
        stock = enc.encoder(stock_mel, output_hidden_states=True).hidden_states
    assert stock[0].shape[1] == 1500
    # The conv front end (tap 0) equals the stock one on every valid frame.
    enc.layers.insert(0, 0)
    try:
        ours0 = enc(mel.input_features, mel.window_frames, mel.windows_per_clip).features[0, 0]
    finally:
        enc.layers.pop(0)
    torch.testing.assert_close(ours0[:150], stock[0][0, :150], atol=1e-5, rtol=1e-4)
    # Deeper layers differ (stock frames also attend to 27 s of padding) but stay close in direction.
    ours_last = out.features[0, -1, :150]
    ref = stock[enc.layers[-1]][0, :150]
    assert torch.isfinite(ours_last).all()
    cos = torch.nn.functional.cosine_similarity(ours_last.flatten(), ref.flatten(), dim=0)
    assert cos > 0.5


def test_padded_batch_matches_single_clip(model):
    enc = model.encoder
    short, long = tone(1.0), tone(2.5, 300.0)
    both = enc.mels([short, long])
    out = enc(both.input_features, both.window_frames, both.windows_per_clip)
    alone = enc.mels([short])
    single = enc(alone.input_features, alone.window_frames, alone.windows_per_clip)
    assert out.mask.sum(1).tolist() == [50, 125]
    torch.testing.assert_close(out.features[0, :, :50], single.features[0, :, :50], atol=1e-5, rtol=1e-4)


def test_long_clip_is_windowed(model):
    enc = model.encoder
    mel = enc.mels([tone(40.0)])
    assert mel.windows_per_clip.tolist() == [2] and mel.window_frames.tolist() == [1500, 500]
    assert mel.input_features.shape[-1] == 3000  # the longest window is full: no extra frame
    out = enc(mel.input_features, mel.window_frames, mel.windows_per_clip)
    assert out.features.shape[2] == 2000 and bool(out.mask.all())
    batch = model.collator()([{"audio": tone(40.0), "instruction": "Q?", "target": "A."}])
    assert torch.isfinite(model(**batch).loss)


def test_long_clip_is_refused_when_configured(tiny_whisper_source, tiny_llm_source):
    model = make_model(tiny_whisper_source, tiny_llm_source, long_audio="refuse")
    with pytest.raises(LongAudioError, match=r"clip40.*40.0 s.*long_audio=refuse"):
        model.collator()([{"audio": tone(40.0), "clip_id": "clip40", "instruction": "Q?", "target": "A."}])


def test_cached_features_give_the_same_logits(model):
    rows = [r for r in mixed_rows() if "audio" in r]
    feats = model.encode_audio([r["audio"] for r in rows])
    assert [f.shape for f in feats] == [(model.encoder.num_taps, 50, model.encoder.hidden_size)] + [
        (model.encoder.num_taps, 115, model.encoder.hidden_size)
    ]
    cached = [
        {**{k: v for k, v in r.items() if k != "audio"}, "encoder_features": f}
        for r, f in zip(rows, feats, strict=True)
    ]
    model.eval()
    with torch.no_grad():
        raw = model(**model.collator()(rows)).logits
        again = model(**model.collator()(cached)).logits
    torch.testing.assert_close(raw, again, atol=1e-5, rtol=1e-4)


# ---- bad audio ----


def test_bad_audio_gives_clear_errors(model, tmp_path):
    collate = model.collator()
    row = {"instruction": "Q?", "target": "A."}
    with pytest.raises(AudioError, match="nope.wav"):
        collate([{**row, "audio_path": str(tmp_path / "nope.wav")}])
    with pytest.raises(AudioError, match="nan-clip.*non-finite"):
        collate([{**row, "audio": np.full(16000, np.nan, np.float32), "clip_id": "nan-clip"}])
    with pytest.raises(AudioError, match="empty"):
        collate([{**row, "audio": np.zeros(0, np.float32)}])
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav"):
        collate([{**row, "audio_path": str(empty)}])


def test_stereo_and_other_rates_are_converted(model, tmp_path):
    collate = model.collator()
    row = {"instruction": "Q?", "target": "A."}
    stereo_8k = tmp_path / "stereo8k.wav"
    sf.write(stereo_8k, np.stack([tone(2.0, sr=8000), tone(2.0, 440.0, sr=8000)], axis=1), 8000)
    batch = collate([{**row, "audio_path": str(stereo_8k)}])
    assert batch["window_frames"].tolist() == [100]  # 2 s at 16 kHz
    stereo = np.stack([tone(1.0), tone(1.0)])  # (channels, samples)
    batch = collate(
        [
            {**row, "audio": stereo, "sampling_rate": 16000},
            {**row, "audio": tone(2.0, sr=8000), "sampling_rate": 8000},
        ]
    )
    assert batch["window_frames"].tolist() == [50, 100]


# ---- generation ----


def test_batched_generate_matches_single_rows(model):
    rows = [
        {"audio": tone(1.0), "transcript": "hi", "instruction": "What can you hear?"},
        {"messages": [{"role": "user", "content": "Say something."}]},
        {
            "audio": tone(2.3, 330.0),
            "transcript": "a longer one",
            "instruction": "Describe the speaker's voice.",
        },
    ]
    # The random tiny LLM likes newlines (stripped from answers): suppress them so answers are visible.
    newline = model.tokenizer("\n", add_special_tokens=False).input_ids
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "suppress_tokens": newline}
    batched = model.generate(rows, **kwargs)
    assert len(batched) == 3 and all(isinstance(a, str) and a for a in batched)
    assert [model.generate([r], **kwargs)[0] for r in rows] == batched


def test_questions_about_one_clip_share_its_prompt_and_answer_as_alone(model, tmp_path):
    clips = []
    for i, (seconds, hz) in enumerate([(1.0, 220.0), (2.3, 330.0)]):
        clips.append(tmp_path / f"clip{i}.wav")
        sf.write(clips[-1], tone(seconds, hz), 16000)
    questions = ["What can you hear?", "Is the speaker a man or a woman?", "How fast is the speech?"]
    rows = [
        {"audio_path": str(c), "transcript": t, "instruction": q}
        for c, t in zip(clips, ["hi", "a longer one"], strict=True)
        for q in questions
    ]
    rows.insert(2, {"messages": [{"role": "user", "content": "Say something."}]})
    newline = model.tokenizer("\n", add_special_tokens=False).input_ids
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "suppress_tokens": newline}
    encoded = []
    real = model.audio_embeddings

    def counting(**audio):
        out = real(**audio)
        encoded.append(out[0].shape[0])
        return out

    model.audio_embeddings = counting
    shared = model.generate(rows, **kwargs)
    assert encoded == [2]  # each clip's audio once, not once per question
    plain = model.generate(rows, share_prefix=False, **kwargs)
    assert shared == plain and len(set(shared)) > 2


def test_alignment_warmup_is_shared_by_target_sets_of_the_same_clips(
    tiny_whisper_source, tiny_llm_source, tmp_path
):
    """Another target set of the same clips (labels vs self-output, several rows per clip, in another
    order) takes the same warm-up steps, so a study's variants share one stored warm-up."""
    from speechllm.train.align import pretrain_alignment

    clips = [f"c{i}" for i in range(4)]
    texts = {c: f"A {'man' if i % 2 else 'woman'} speaks." for i, c in enumerate(clips)}

    def run(order: list[str]):
        model = make_model(tiny_whisper_source, tiny_llm_source)
        taps, hidden = model.encoder.num_taps, model.encoder.hidden_size

        def features(row):
            g = torch.Generator().manual_seed(int(row["clip_id"][1:]))
            return torch.randn(taps, 6, hidden, generator=g)

        rows = [{"clip_id": c, "audio_path": str(tmp_path / f"{c}.wav")} for c in order]
        history = pretrain_alignment(model, rows, [texts[c] for c in order], features, steps=4, batch_size=2,
                                     learning_rate=1e-3, seed=0, cache_dir=str(tmp_path / "cache"))  # fmt: skip
        return history, {k: v.clone() for k, v in model.adapter.state_dict().items()}

    first, weights = run(clips)
    again, weights_again = run([*reversed(clips), clips[0], clips[2]])
    assert len(list((tmp_path / "cache" / "align-warmup").glob("*.safetensors"))) == 1  # reused, not redone
    assert again == first and all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_a_checkpoint_cut_by_a_full_disk_names_the_file(model, tmp_path, monkeypatch):
    import errno

    from safetensors import SafetensorError

    from speechllm.errors import one_line
    from speechllm.model import speechlm

    def disk_full(state, path, metadata=None):
        Path(path).write_bytes(b"\0" * 8)  # what got out before the disk filled
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(speechlm, "save_file", disk_full)
    with pytest.raises(OSError) as err:
        model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    assert err.value.errno == errno.ENOSPC and not weights.exists()
    assert one_line(err.value) == f"error: cannot write ({weights}): No space left on device"
