"""Convert a CTranslate2 Whisper export into ``transformers``' ``WhisperForConditionalGeneration``.

CTranslate2 stores Whisper as a generic pre-norm transformer: per layer ``self_attention`` with q/k/v
fused into one ``linear_0`` (and a zero bias slice for k, which has no bias in Whisper), the decoder's
cross ``attention`` with q in ``linear_0`` and k/v fused in ``linear_1``, ``ffn`` ``linear_0/1`` and
LayerNorms as ``gamma``/``beta``. The mapping below is the inverse of CTranslate2's Whisper loader;
every CTranslate2 weight must be used once and every Hugging Face parameter filled (strict load), so a
layout change fails loudly instead of producing a half-random model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from speechllm.packaged.ct2 import CT2FormatError, CT2Model, read_ct2_model
from speechllm.packaged.whisper_processor import build_whisper_processor, whisper_generation_config

log = logging.getLogger(__name__)

GELU = 3  # CTranslate2 ActivationType order: ReLU, GELUTanh, Swish, GELU, GELUSigmoid, Tanh
# Flags a Whisper export must have; anything else is a different architecture.
EXPECTED_FLAGS = {"decoder/activation": GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                  "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0}  # fmt: skip
# Rank-0 metadata read or checked here rather than mapped to a parameter.
# The ALiBi options newer exporters write are moot with `decoder/alibi` checked to be 0.
METADATA = {*EXPECTED_FLAGS, "encoder/num_heads", "decoder/num_heads", "decoder/alignment_heads",
            "decoder/alignment_layer", "decoder/alibi_use_positive_positions", "decoder/scale_alibi"}  # fmt: skip


class _Mapper:
    """Collect Hugging Face tensors from CTranslate2 variables, tracking which were used."""

    def __init__(self, ct2: CT2Model):
        self.ct2 = ct2
        self.used: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.ct2.variables:
            raise CT2FormatError(f"CTranslate2 Whisper variable '{name}' is missing")
        self.used.add(name)
        return self.ct2.variables[name]

    def put(self, hf_name: str, value: np.ndarray) -> None:
        # float16 -> float32 is exact; CPU inference and training want float32.
        self.state[hf_name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))

    def linear(self, hf: str, ct: str, bias: bool = True) -> None:
        self.put(f"{hf}.weight", self.get(f"{ct}/weight"))
        if bias:
            self.put(f"{hf}.bias", self.get(f"{ct}/bias"))

    def layer_norm(self, hf: str, ct: str) -> None:
        self.put(f"{hf}.weight", self.get(f"{ct}/gamma"))
        self.put(f"{hf}.bias", self.get(f"{ct}/beta"))

    def fused(self, hf: str, ct: str, parts: list[str]) -> None:
        """Split a fused projection (rows stacked in ``parts`` order); ``k`` gets no bias.

        The k slice of the fused bias must be all zeros: Whisper's k projection has no bias and the
        exporter pads it with zeros. A non-zero slice means the mapping is wrong.
        """
        weights = np.split(self.get(f"{ct}/weight"), len(parts), axis=0)
        biases = np.split(self.get(f"{ct}/bias"), len(parts), axis=0)
        for part, weight, bias in zip(parts, weights, biases, strict=True):
            self.put(f"{hf}.{part}_proj.weight", weight)
            if part == "k":
                if np.any(bias != 0):
                    raise CT2FormatError(f"'{ct}/bias' has a non-zero key bias; not a Whisper export")
            else:
                self.put(f"{hf}.{part}_proj.bias", bias)


def _count_layers(ct2: CT2Model, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in ct2.variables:
        n += 1
    return n


def whisper_config_from_ct2(ct2: CT2Model, vocab_size: int) -> WhisperConfig:
    """Derive the ``WhisperConfig`` from the exported shapes and scalars.

    Args:
        ct2: the parsed export.
        vocab_size: tokenizer length, checked against the embedding rows.

    Returns:
        The config (token ids are filled in by the caller from the tokenizer).

    Raises:
        CT2FormatError: not a Whisper export, or its vocabulary does not match the tokenizer.
    """
    if ct2.spec_name != "WhisperSpec":
        raise CT2FormatError(f"expected a WhisperSpec export, got {ct2.spec_name}")
    for name, expected in EXPECTED_FLAGS.items():
        if ct2.scalar(name) != expected:
            raise CT2FormatError(f"'{name}' is {ct2.scalar(name)}, a Whisper export has {expected}")
    v = ct2.variables
    embed = v["decoder/embeddings/weight"]
    if embed.shape[0] != vocab_size:
        raise CT2FormatError(f"model vocabulary {embed.shape[0]} != tokenizer length {vocab_size}")
    d_model = embed.shape[1]
    return WhisperConfig(
        vocab_size=embed.shape[0],
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )


def ct2_to_hf_state_dict(ct2: CT2Model, config: WhisperConfig) -> dict[str, torch.Tensor]:
    """Map every CTranslate2 weight to its ``WhisperForConditionalGeneration`` parameter name.

    Args:
        ct2: the parsed export.
        config: the matching config (layer counts).

    Returns:
        A float32 state dict with exactly the model's keys (``proj_out`` tied to the embeddings).

    Raises:
        CT2FormatError: a weight is missing, left over, or a k bias is non-zero.
    """
    m = _Mapper(ct2)
    m.linear("model.encoder.conv1", "encoder/conv1")
    m.linear("model.encoder.conv2", "encoder/conv2")
    m.put("model.encoder.embed_positions.weight", m.get("encoder/position_encodings/encodings"))
    for i in range(config.encoder_layers):
        hf, ct = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        m.fused(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ["q", "k", "v"])
        m.linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        m.layer_norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        m.linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        m.linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        m.layer_norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
    m.layer_norm("model.encoder.layer_norm", "encoder/layer_norm")

    m.put("model.decoder.embed_tokens.weight", m.get("decoder/embeddings/weight"))
    m.put("model.decoder.embed_positions.weight", m.get("decoder/position_encodings/encodings"))
    for i in range(config.decoder_layers):
        hf, ct = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        m.fused(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ["q", "k", "v"])
        m.linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        m.layer_norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        m.linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
        m.fused(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ["k", "v"])
        m.linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
        m.layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        m.linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        m.linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        m.layer_norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
    m.layer_norm("model.decoder.layer_norm", "decoder/layer_norm")

    # The output projection is an alias of the embeddings in the export and tied in the HF model.
    if (
        ct2.aliases.get("decoder/projection/weight", "decoder/embeddings/weight")
        != "decoder/embeddings/weight"
    ):
        raise CT2FormatError("the output projection is not tied to the decoder embeddings")
    m.state["proj_out.weight"] = m.state["model.decoder.embed_tokens.weight"]

    leftover = set(ct2.variables) - m.used - METADATA
    if leftover:
        raise CT2FormatError(f"unmapped CTranslate2 variables: {sorted(leftover)[:8]}")
    return m.state


def convert_whisper_ct2(model_dir: str | Path, out_dir: str | Path) -> None:
    """Convert a CTranslate2 Whisper folder (``model.bin``, ``tokenizer.json``, ``config.json``).

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32) and the
    WhisperProcessor files into ``out_dir``, loadable with ``from_pretrained``.

    Args:
        model_dir: the CTranslate2 export folder.
        out_dir: destination folder (must exist).

    Raises:
        CT2FormatError: the export is not a Whisper this mapping understands.
        RuntimeError: the strict state-dict load found missing or unexpected keys.
    """
    model_dir = Path(model_dir)
    ct2 = read_ct2_model(model_dir / "model.bin")
    extra = json.loads((model_dir / "config.json").read_text())
    num_mel_bins = ct2.variables["encoder/conv1/weight"].shape[1]
    processor: WhisperProcessor = build_whisper_processor(model_dir / "tokenizer.json", num_mel_bins)
    tokenizer = processor.tokenizer

    config = whisper_config_from_ct2(ct2, len(tokenizer))
    generation_config = whisper_generation_config(
        tokenizer,
        max_length=config.max_target_positions,
        alignment_heads=extra.get("alignment_heads"),
        suppress_tokens=extra.get("suppress_ids"),
        begin_suppress_tokens=extra.get("suppress_ids_begin"),
        lang_ids=extra.get("lang_ids"),
    )
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        setattr(config, key, getattr(generation_config, key))
    # Whisper's own bos in the config is <|endoftext|>, as in the original checkpoints.
    config.bos_token_id = generation_config.eos_token_id

    state = ct2_to_hf_state_dict(ct2, config)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    # strict=True: any missing or unexpected key raises, so the result is never partly random.
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = generation_config
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    log.info(
        "converted CTranslate2 Whisper %s (d_model %d, %d encoder / %d decoder layers) -> %s",
        model_dir, config.d_model, config.encoder_layers, config.decoder_layers, out_dir,
    )  # fmt: skip
