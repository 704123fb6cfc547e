"""Encoder-feature cache: with a frozen encoder, encode each clip once and reuse it every epoch.

A frozen encoder maps the same clip to the same features, so running it every epoch (for Whisper
large, most of a step's cost) is waste. Before training, every speech clip is encoded once and its
tapped features `(num_taps, frames, hidden)` saved as one safetensors file under
`<cache_dir>/<encoder fingerprint>/`. The fingerprint covers what changes the features (encoder
source, tapped layers, long-audio policy, dtype, and a checksum of the weights), and the file name covers
the clip (id, path, file size and modification time), so a changed encoder or an edited wav never
reuses stale features. Training rows then carry `encoder_features` instead of audio.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from speechllm.audio import file_stamp

logger = logging.getLogger(__name__)


def encoder_fingerprint(encoder) -> str:
    """A short hash of what determines a frozen encoder's features.

    Args:
        encoder: the SpeechLM's encoder module (`source`, `layers`, `long_audio` attributes where it
            has them, and its parameters).

    Returns:
        16 hex characters.
    """
    params = list(encoder.parameters())
    # A few scalar statistics of the weights distinguish fine-tuned copies that share a source name.
    checksum = [round(float(p.detach().float().sum()), 4) for p in params[:4]] + [len(params)]
    desc = {
        "class": type(encoder).__name__,
        "source": str(getattr(encoder, "source", None)),
        "layers": list(getattr(encoder, "layers", [])),
        "long_audio": getattr(encoder, "long_audio", None),
        "dtype": str(params[0].dtype) if params else None,
        "checksum": checksum,
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def clip_key(clip_id: str, audio_path: str) -> str:
    """File stem for one clip's features: changes when the clip id, path or file contents' stat change."""
    return hashlib.sha1(f"{clip_id}|{audio_path}|{file_stamp(audio_path)}".encode()).hexdigest()


class FeatureCache:
    """Cached encoder features of clips, on disk.

    Args:
        root: cache folder (one subfolder per encoder fingerprint is made inside).
        fingerprint: from :func:`encoder_fingerprint`.
    """

    def __init__(self, root: str | Path, fingerprint: str):
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint

    def path(self, clip_id: str, audio_path: str) -> Path:
        return self.dir / f"{clip_key(clip_id, audio_path)}.safetensors"

    def has(self, clip_id: str, audio_path: str) -> bool:
        return self.path(clip_id, audio_path).is_file()

    def get(self, clip_id: str, audio_path: str) -> torch.Tensor:
        """Shapes: -> (num_taps, frames, hidden)."""
        return load_file(self.path(clip_id, audio_path))["features"]

    def put(self, clip_id: str, audio_path: str, features: torch.Tensor) -> None:
        """Store one clip's features atomically (write to a temporary name, then rename).

        Shapes: features (num_taps, frames, hidden).
        """
        path = self.path(clip_id, audio_path)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"features": features.detach().contiguous().cpu()}, str(tmp), metadata={"clip_id": clip_id})
        tmp.replace(path)

    @torch.no_grad()
    def fill(self, model, clips: list[tuple[str, str]], *, batch_size: int = 8,
             shard: tuple[int, int] = (0, 1)) -> dict:  # fmt: skip
        """Encode the clips that are not cached yet.

        Args:
            model: the SpeechLM (its `encode_audio`).
            clips: (clip_id, audio_path) pairs; duplicates are encoded once.
            batch_size: clips per encoder forward.
            shard: (i, n): this process encodes missing clips i, i+n, ... (distributed runs split the work;
                call `wait_for_everyone` afterwards).

        Returns:
            {"clips": distinct clips, "encoded": newly encoded here, "seconds": time spent}.
        """
        start = time.perf_counter()
        unique = sorted(set(clips))
        missing = [c for c in unique if not self.has(*c)]
        mine = missing[shard[0] :: shard[1]]
        was_training = model.training
        model.eval()
        try:
            for b in range(0, len(mine), batch_size):
                chunk = mine[b : b + batch_size]
                feats = model.encode_audio([path for _, path in chunk], batch_size=batch_size)
                for (clip_id, path), f in zip(chunk, feats, strict=True):
                    self.put(clip_id, path, f)
        finally:
            model.train(was_training)
        stats = {"clips": len(unique), "encoded": len(mine), "seconds": time.perf_counter() - start}
        logger.info("encoder-feature cache %s: %d clips, %d encoded now (%.1f s)", self.dir, stats["clips"],
                    stats["encoded"], stats["seconds"])  # fmt: skip
        return stats
