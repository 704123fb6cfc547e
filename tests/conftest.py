"""Shared fixtures. Tests run offline on CPU: an accidental hub download fails fast."""

import os

# Set before transformers/datasets are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llm_source(tmp_path_factory) -> str:
    """A tiny random causal LM with a chat-template tokenizer, saved locally (a local-path source)."""
    from speechllm.tiny import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="session")
def tiny_whisper_source(tmp_path_factory) -> str:
    """A tiny random Whisper model with its processor, saved locally."""
    from speechllm.tiny import make_tiny_whisper

    return make_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def smollm2_source() -> str:
    """The packaged real SmolLM2-135M-Instruct (converted once into the user cache)."""
    return "packaged:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def whisper_tiny_en_source() -> str:
    """The packaged real Whisper tiny.en (converted once into the user cache)."""
    return "packaged:whisper-tiny.en"


@pytest.fixture(scope="session")
def espeak():
    """Speak text into a wav file with espeak-ng: `espeak(text, path, voice=..., pitch=..., ...)`."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed; run `make setup`")
    from speechllm.corpus.espeak import speak

    def _speak(text: str, path, **kwargs) -> Path:
        return Path(speak(text, path, **kwargs))

    return _speak


@pytest.fixture(autouse=True)
def _own_attribute_folders():
    """A test that reads attribute YAMLs from a folder of its own (`describe.attributes_dir`) registers it for
    the whole process (`speechllm.attributes.use_attributes_dir`); forget it after the test, so an edited
    copy of pitch.yaml in one test is not what the next test reads."""
    from speechllm import attributes

    before = list(attributes._extra_dirs)
    yield
    if attributes._extra_dirs != before:
        attributes._extra_dirs[:] = before
        attributes.attribute_tasks.cache_clear()
