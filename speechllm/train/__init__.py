"""Training: config checks, the speech + replay mixture, Trainer wiring, losses, and run outputs.

Entry point: :func:`train` (called by `train.py` with the composed Hydra config).
"""

from speechllm.train.run import train

__all__ = ["train"]
