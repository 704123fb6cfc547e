"""WhisperProcessor and generation settings for Whisper checkpoints shipped as CTranslate2 files.

Shared by the packaged Whisper conversions (``whisper-tiny.en``, multilingual ``whisper-base``) and the
tiny random Whisper used in tests, so they decode with the same tokenizer, special tokens and prompt as
the ``openai/whisper-*`` checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast
from transformers.tokenization_utils_base import AddedToken

# English-only Whisper vocabulary (GPT-2 BPE 50256 tokens + specials + 1501 timestamps).
EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"
NO_TIMESTAMPS = "<|notimestamps|>"
PREV_SOT = "<|startofprev|>"
NUM_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|> in 0.02 s steps


def build_whisper_tokenizer(tokenizer_json: str | Path) -> WhisperTokenizerFast:
    """Build a Whisper tokenizer from a CTranslate2 export's ``tokenizer.json``.

    The CTranslate2 export ships the BPE vocabulary and the special tokens up to ``<|notimestamps|>``
    but not the timestamp tokens, which the model's output layer still has; they are appended as
    ordinary added tokens (as the original Hugging Face conversion does) so every model id decodes,
    and ``decode(..., skip_special_tokens=True)`` filters them.

    Args:
        tokenizer_json: path to the ``tokenizer.json`` file.

    Returns:
        The tokenizer; its length equals the model vocabulary (51864 English-only, 51865 multilingual).
    """
    tok = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        unk_token=EOT,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        add_prefix_space=False,
        predict_timestamps=False,
    )
    # Every added token of the export is a Whisper control token (language, task, prompt markers).
    specials = [tok.added_tokens_decoder[i].content for i in sorted(tok.added_tokens_decoder)]
    tok.add_special_tokens({"additional_special_tokens": specials})  # replaces the list (the default)
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(NUM_TIMESTAMPS)]
    tok.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False) for t in timestamps])
    return tok


def build_whisper_processor(tokenizer_json: str | Path, num_mel_bins: int = 80) -> WhisperProcessor:
    """Build a WhisperProcessor: log-mel feature extractor + the export's tokenizer.

    Args:
        tokenizer_json: path to the ``tokenizer.json`` file.
        num_mel_bins: mel bins the encoder expects (80 for tiny..large-v2, 128 for large-v3).

    Returns:
        The processor (16 kHz, 30-s windows, 400-point FFT, hop 160, as OpenAI Whisper).
    """
    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return WhisperProcessor(
        feature_extractor=feature_extractor, tokenizer=build_whisper_tokenizer(tokenizer_json)
    )


def whisper_generation_config(
    tokenizer: WhisperTokenizerFast,
    *,
    max_length: int = 448,
    alignment_heads: list[list[int]] | None = None,
    suppress_tokens: list[int] | None = None,
    begin_suppress_tokens: list[int] | None = None,
    lang_ids: list[int] | None = None,
) -> GenerationConfig:
    """Generation settings of a Whisper model (transcribe, no timestamps by default).

    ``generate`` builds its prompt from these ids (``<|startoftranscript|><|notimestamps|>``), so no
    ``forced_decoder_ids`` are set: they are deprecated for Whisper and would conflict.

    Args:
        tokenizer: the model's tokenizer (special-token ids are read from it, not hard-coded).
        max_length: decoder length limit (``max_target_positions``).
        alignment_heads: cross-attention heads used for word timestamps ([layer, head] pairs).
        suppress_tokens: ids never generated (the non-speech symbols of OpenAI's decoder).
        begin_suppress_tokens: ids not generated as the first token (space, end of text).
        lang_ids: the language tokens' ids of a multilingual model (the export's ``lang_ids``); None for
            an English-only one. A multilingual model's prompt names the language and the task, which
            ``generate(language=...)`` sets, or detects per clip when it is not given.

    Returns:
        The generation config.
    """
    ids = tokenizer.convert_tokens_to_ids
    multilingual = {}
    if lang_ids:
        multilingual = {
            "lang_to_id": {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids},
            "task_to_id": {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        }
    return GenerationConfig(
        bos_token_id=ids(SOT),
        decoder_start_token_id=ids(SOT),
        eos_token_id=ids(EOT),
        pad_token_id=ids(EOT),
        no_timestamps_token_id=ids(NO_TIMESTAMPS),
        prev_sot_token_id=ids(PREV_SOT),
        max_initial_timestamp_index=50,
        is_multilingual=bool(lang_ids),
        **multilingual,
        return_timestamps=False,
        max_length=max_length,
        alignment_heads=alignment_heads or [],
        suppress_tokens=suppress_tokens or [],
        begin_suppress_tokens=begin_suppress_tokens if begin_suppress_tokens is not None else [220, ids(EOT)],
    )
