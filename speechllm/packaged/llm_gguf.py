"""Convert a GGUF causal LM (e.g. SmolLM2-135M-Instruct Q4_1) into a plain ``transformers`` folder.

``transformers`` reads GGUF (dequantizing to float32) with the ``gguf`` package, but the result
remembers its GGUF origin and its tokenizer is rebuilt generically (wrong eos, a bos prepended to every
text, a SentencePiece-style decoder). Here the weights go into a fresh model built from the same config
(strict load) and the tokenizer is rebuilt from the GGUF metadata, so the cached folder loads like an
ordinary hub checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

log = logging.getLogger(__name__)


def _gguf_fields(path: Path) -> dict:
    """Read the scalar/string tokenizer fields of a GGUF file's metadata.

    Args:
        path: the ``.gguf`` file.

    Returns:
        ``{"bos": id, "eos": id, "unk": id | None, "add_bos": bool, "chat_template": str | None}``.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key, default=None):
        field = reader.fields.get(key)
        if field is None or not field.data:
            return default
        part = field.parts[field.data[0]]
        if key == "tokenizer.chat_template":
            return bytes(part).decode("utf-8")
        return part.tolist()[0]

    return {
        "bos": value("tokenizer.ggml.bos_token_id"),
        "eos": value("tokenizer.ggml.eos_token_id"),
        "unk": value("tokenizer.ggml.unknown_token_id"),
        "add_bos": bool(value("tokenizer.ggml.add_bos_token", False)),
        "chat_template": value("tokenizer.chat_template"),
    }


def _build_tokenizer(gguf_path: Path, fields: dict) -> PreTrainedTokenizerFast:
    """Rebuild a byte-level BPE tokenizer from the GGUF vocabulary and merges.

    Args:
        gguf_path: the ``.gguf`` file.
        fields: output of ``_gguf_fields``.

    Returns:
        A tokenizer with the GGUF chat template, ``bos``/``eos``/``unk`` from the metadata and
        ``pad = unk`` (a token distinct from ``eos``, so masking padding never masks an end of turn).
    """
    generic = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    backend = Tokenizer.from_str(generic.backend_tokenizer.to_str())
    # Byte-level BPE: bytes <-> unicode mapping only; a bos only where the model was trained with one.
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if fields["add_bos"]:
        bos = generic.convert_ids_to_tokens(fields["bos"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, fields["bos"])]
        )
    ids = generic.convert_ids_to_tokens
    unk = ids(fields["unk"]) if fields["unk"] is not None else None
    specials = [t.content for i, t in sorted(generic.added_tokens_decoder.items()) if t.special]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=ids(fields["bos"]),
        eos_token=ids(fields["eos"]),
        unk_token=unk,
        pad_token=unk if unk is not None else ids(fields["eos"]),
        additional_special_tokens=[
            t for t in specials if t not in {ids(fields["bos"]), ids(fields["eos"]), unk}
        ],
        chat_template=fields["chat_template"],
        model_max_length=generic.model_max_length,
        clean_up_tokenization_spaces=False,
        # Causal LMs take no token_type_ids; returning them breaks `generate(**encoded)`.
        model_input_names=["input_ids", "attention_mask"],
    )


def convert_llm_gguf(gguf_path: str | Path, out_dir: str | Path) -> None:
    """Convert a GGUF causal LM into ``config.json`` + ``model.safetensors`` (float32) + tokenizer.

    Args:
        gguf_path: the ``.gguf`` file (quantized weights are dequantized to float32 exactly as
            ``transformers`` does).
        out_dir: destination folder (must exist).

    Raises:
        RuntimeError: the strict state-dict load found missing or unexpected keys.
    """
    gguf_path = Path(gguf_path)
    fields = _gguf_fields(gguf_path)
    tokenizer = _build_tokenizer(gguf_path, fields)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = type(loaded.config).from_dict(loaded.config.to_dict())
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id, config.eos_token_id = fields["bos"], fields["eos"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict=True: a renamed or missing tensor fails here instead of leaving random weights.
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    # Only persistent tensors are saved; buffers computed at init (rotary frequencies) stay on the meta
    # device here and are rebuilt by `from_pretrained`.
    meta = [name for name, t in model.state_dict().items() if t.is_meta]
    if meta:
        raise RuntimeError(f"GGUF conversion left parameters without values: {meta[:8]}")
    model.generation_config = GenerationConfig(
        bos_token_id=fields["bos"], eos_token_id=fields["eos"], pad_token_id=tokenizer.pad_token_id
    )
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("converted GGUF %s (%s, %d layers) -> %s", gguf_path.name, config.model_type,
             config.num_hidden_layers, out_dir)  # fmt: skip
