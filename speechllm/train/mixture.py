"""The training mixture: speech rows with self-output targets plus a share of text replay.

Replay (general chats the LLM itself wrote or answered) keeps the LLM's original behaviour in the
training signal; a few percent is enough (LAMOL, Safety-Tuned LLaMAs). `ratio` is the share of the
*mixture's* rows that are replay, so ratio=0.05 with 950 speech rows adds 50 replay rows; `weights`
split those rows across replay datasets. The mixture depends only on the inputs and the seed.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass

import datasets
import numpy as np

from speechllm.config import ConfigError

logger = logging.getLogger(__name__)

# One schema for both kinds of rows, so they fit in one `datasets.Dataset` (the length-grouped sampler
# reads its `length` column). Speech rows leave `messages` empty; replay rows leave the audio fields None.
MIXTURE_FEATURES = datasets.Features(
    {
        "kind": datasets.Value("string"),  # speech | replay
        "source": datasets.Value("string"),  # target mode or replay dataset name
        "clip_id": datasets.Value("string"),
        "audio_path": datasets.Value("string"),
        "transcript": datasets.Value("string"),
        "description": datasets.Value("string"),
        "instruction": datasets.Value("string"),
        "target": datasets.Value("string"),
        "align_text": datasets.Value("string"),  # what the clip's audio embeddings are aligned to (or None)
        "clip_labels": datasets.Value("string"),  # JSON of the clip's label_* values (grpo's rewards), or None
        "keep_mask": datasets.Sequence(datasets.Value("int8")),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    }
)


@dataclass
class Mixture:
    """A built mixture and what is in it.

    Attributes:
        dataset: the rows (columns of :data:`MIXTURE_FEATURES`), in a seeded order.
        composition: counts per part (`speech`, `replay/<name>`), the realised replay share, and how
            many times the largest replay source had to be repeated.
    """

    dataset: datasets.Dataset
    composition: dict


def speech_rows(targets: datasets.Dataset, *, split: str | None, use_keep_mask: bool, max_rows: int | None,
                seed: int, align_text=None) -> list[dict]:  # fmt: skip
    """Rows of a targets dataset in mixture form.

    Args:
        targets: a `targets/<mode>/` dataset (described columns + instruction, target, target_mode).
        split: keep only rows with this `split` value (None keeps all).
        use_keep_mask: copy the token filter's `keep_mask` (the column must exist).
        max_rows: keep a seeded random subset of this many rows (None: all).
        seed: for the subset.
        align_text: row -> its alignment text (see `speechllm.train.align`), or None for none.

    Returns:
        Mixture rows.

    Raises:
        ValueError: no rows left, or a required column missing.
    """
    for col in ("clip_id", "audio_path", "instruction", "target"):
        if col not in targets.column_names:
            raise ValueError(f"the targets dataset has no '{col}' column (columns: {targets.column_names})")
    if use_keep_mask and "keep_mask" not in targets.column_names:
        raise ValueError("token filtering is on but the targets dataset has no 'keep_mask' column")
    if split is not None and "split" in targets.column_names:
        present = sorted(set(targets["split"]))
        targets = targets.filter(lambda s: s == split, input_columns="split")
        if len(targets) == 0:
            raise ConfigError(f"train_split={split!r}: the targets have no rows of that split (they have {present})")
    if len(targets) == 0:
        raise ConfigError("the targets dataset has no rows; prepare it again (data_prep/prepare.py)")
    indices = range(len(targets))
    if max_rows is not None and max_rows < len(targets):
        indices = sorted(np.random.default_rng(seed).permutation(len(targets))[:max_rows].tolist())
    cols = targets.column_names
    rows = []
    for i in indices:
        r = targets[int(i)]
        rows.append(
            {
                "kind": "speech",
                "source": r.get("target_mode") or "speech",
                "clip_id": str(r["clip_id"]),
                "audio_path": r["audio_path"],
                "transcript": r.get("transcript") if "transcript" in cols else None,
                "description": r.get("description") if "description" in cols else None,
                "instruction": r["instruction"],
                "target": r["target"],
                "align_text": align_text(r) if align_text is not None else None,
                "clip_labels": json.dumps(
                    {k[len("label_") :]: str(v).strip().lower() for k, v in r.items() if k.startswith("label_") and v}
                ),
                "keep_mask": list(r["keep_mask"]) if use_keep_mask else None,
                "messages": [],
            }
        )
    return rows


def replay_counts(n_speech: int, ratio: float, weights: dict[str, float]) -> dict[str, int]:
    """How many replay rows each source contributes.

    The total is round(ratio / (1 - ratio) * n_speech), so replay is `ratio` of the mixture; it is
    split by `weights` with largest remainders, so the counts add up exactly.

    Args:
        n_speech: number of speech rows.
        ratio: replay share of the mixture, in [0, 1).
        weights: source name -> weight (>= 0).

    Returns:
        source name -> row count (sources with weight 0 are omitted).
    """
    active = {k: float(w) for k, w in weights.items() if w > 0}
    if ratio <= 0 or not active:
        return {}
    total = int(round(ratio / (1.0 - ratio) * n_speech))
    norm = sum(active.values())
    exact = {k: total * w / norm for k, w in active.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    # Hand the leftover rows to the largest fractional parts; ties break on the name, for determinism.
    leftover = total - sum(counts.values())
    for k in sorted(active, key=lambda k: (-(exact[k] - counts[k]), k))[:leftover]:
        counts[k] += 1
    return {k: v for k, v in counts.items() if v > 0}


def replay_rows(source: datasets.Dataset, name: str, count: int, seed: int) -> tuple[list[dict], int]:
    """Draw `count` rows from one replay dataset: a seeded permutation, repeated when it is too small.

    Args:
        source: a `replay/<name>/` dataset with a `messages` column.
        name: the dataset name (recorded in each row's `source`).
        count: rows to draw.
        seed: for the permutation.

    Returns:
        (mixture rows, number of passes over the source: 1 means no row was repeated).
    """
    if "messages" not in source.column_names:
        raise ValueError(f"replay dataset '{name}' has no 'messages' column (columns: {source.column_names})")
    if len(source) == 0:
        raise ValueError(f"replay dataset '{name}' is empty but replay.weights.{name} > 0")
    rng = np.random.default_rng([seed, len(name), *name.encode()])
    order: list[int] = []
    passes = 0
    while len(order) < count:
        order.extend(rng.permutation(len(source)).tolist())
        passes += 1
    rows = []
    for i in order[:count]:
        messages = [{"role": m["role"], "content": m["content"]} for m in source[int(i)]["messages"]]
        rows.append(
            {
                "kind": "replay", "source": name, "clip_id": None, "audio_path": None, "transcript": None,
                "clip_labels": None,
                "description": None, "instruction": None, "target": None, "align_text": None, "keep_mask": None,
                "messages": messages,
            }
        )  # fmt: skip
    return rows, passes


def build_mixture(speech: list[dict], replay: dict[str, datasets.Dataset], *, ratio: float,
                  weights: dict[str, float], seed: int) -> Mixture:  # fmt: skip
    """Mix speech rows with replay rows and shuffle, deterministically for a seed.

    Args:
        speech: rows from :func:`speech_rows`.
        replay: replay dataset name -> dataset (every source with weight > 0 must be present).
        ratio: replay share of the mixture, in [0, 1).
        weights: replay dataset name -> weight.
        seed: for sampling and shuffling.

    Returns:
        The mixture and its composition (also logged).
    """
    counts = replay_counts(len(speech), ratio, weights)
    rows = list(speech)
    passes = {}
    for name, count in counts.items():
        if name not in replay:
            raise ValueError(f"replay.weights names '{name}' but no such replay dataset was loaded")
        drawn, passes[name] = replay_rows(replay[name], name, count, seed)
        rows.extend(drawn)
    order = np.random.default_rng(seed).permutation(len(rows))
    # Columns a row leaves out (a row built by hand without `align_text`, say) are None.
    dataset = datasets.Dataset.from_list([{k: rows[i].get(k) for k in MIXTURE_FEATURES} for i in order],
                                         features=MIXTURE_FEATURES)  # fmt: skip
    by_part = Counter("speech" if r["kind"] == "speech" else f"replay/{r['source']}" for r in rows)
    n_replay = len(rows) - len(speech)
    composition = {
        "rows": len(rows),
        "speech": len(speech),
        "replay": n_replay,
        "replay_share": n_replay / len(rows) if rows else 0.0,
        "requested_ratio": ratio,
        "parts": dict(sorted(by_part.items())),
        "replay_passes": passes,
    }
    for name, p in passes.items():
        if p > 1:
            logger.warning("replay dataset '%s' has %d rows; %d were drawn, so rows repeat (%d passes)",
                           name, len(replay[name]), counts[name], p)  # fmt: skip
    logger.info(
        "mixture: %d rows = %d speech + %d replay (%.1f%%; %s)",
        len(rows), len(speech), n_replay, 100 * composition["replay_share"],
        ", ".join(f"{k}={v}" for k, v in composition["parts"].items()),
    )  # fmt: skip
    return Mixture(dataset=dataset, composition=composition)
