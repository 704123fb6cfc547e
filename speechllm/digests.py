"""Digests of what a stored result depends on, so that it is reused exactly when nothing changed.

Evaluation stores the answers that do not depend on the trained weights (the text LLM's ceiling, the
untrained baseline); training stores the alignment warm-up's adapter. Each is keyed by a digest of
everything it depends on: weights, clips (by file stamp), texts and settings.
"""

from __future__ import annotations

import hashlib
import json

import torch


def weights_digest(module: torch.nn.Module) -> str:
    """A short digest of a module's weights (names, shapes and sums): equal weights give equal digests."""
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(f"{name}:{tuple(p.shape)}:{float(p.detach().double().sum()):.8e};".encode())
    return h.hexdigest()[:20]


def key_digest(key: dict, length: int = 24) -> str:
    """A hex digest of a JSON-serialisable key (dict order does not matter)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]
