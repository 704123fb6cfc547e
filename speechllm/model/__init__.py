"""Speech-language model: Whisper encoder -> adapter -> LLM (see `speechlm.SpeechLM`)."""

from speechllm.model.prompt import PromptConfig, SpeechCollator
from speechllm.model.speechlm import CheckpointError, SpeechLM

__all__ = ["CheckpointError", "PromptConfig", "SpeechCollator", "SpeechLM"]
