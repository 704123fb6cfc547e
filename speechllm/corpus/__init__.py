"""Audio corpora: the demo corpus generator (espeak-ng, with flite voices), and the audiofolder reader."""

from speechllm.corpus.audiofolder import AudioFolderError, read_audiofolder
from speechllm.corpus.espeak import EspeakError, generate_corpus, speak

__all__ = ["AudioFolderError", "EspeakError", "generate_corpus", "read_audiofolder", "speak"]
