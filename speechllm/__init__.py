"""speechllm: speech-language models trained on the frozen LLM's own answers."""

__version__ = "0.1.0"
