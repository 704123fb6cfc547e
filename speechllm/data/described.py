"""Reading the describe stage's output: one split of `<data_dir>/<name>/described/` as rows.

Training (the listening probe, the alignment warm-up's clips) and evaluation (the held-out clips) read it
through here, so both see the same rows in the same order.
"""

from __future__ import annotations

import os
import random

from speechllm.data.layout import described_dir


class DescribedDataError(ValueError):
    """The described dataset is missing or has no rows of the asked split; the message says what to run."""


def subsample(rows: list[dict], max_clips: int | None, seed: int = 0) -> list[dict]:
    """At most `max_clips` rows, drawn with `seed` and kept in their order.

    A seeded draw, not the first N: corpora are often ordered by speaker or voice, and the first N
    clips would then cover one class.
    """
    if not max_clips or len(rows) <= max_clips:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_clips))
    return [rows[i] for i in keep]


def described_rows(
    data_dir: str, name: str, split: str = "test", max_clips: int | None = None, seed: int = 0
) -> list[dict]:
    """The described dataset's rows of one split, ordered by clip id.

    Args:
        data_dir: ``paths.data_dir``.
        name: dataset name (``data.name``).
        split: which split to keep.
        max_clips: keep N rows (see :func:`subsample`; None: all).
        seed: the draw's seed.

    Raises:
        DescribedDataError: the folder is missing or the split is empty.
    """
    import datasets

    path = str(described_dir(data_dir, name))
    if not os.path.isdir(path):
        raise DescribedDataError(
            f"no described dataset at {path!r}: run `python data_prep/prepare.py data={name}` first, "
            "or pass eval.audiofolder=DIR to evaluate a labelled audiofolder"
        )
    ds = datasets.load_from_disk(path)
    if "split" in ds.column_names:
        splits = sorted(set(ds["split"]))
        idx = [i for i, s in enumerate(ds["split"]) if s == split]
        if not idx:
            raise DescribedDataError(f"{path!r} has no rows with split=={split!r} (splits present: {splits})")
        ds = ds.select(idx)
    rows = sorted((dict(r) for r in ds), key=lambda r: str(r.get("clip_id", "")))
    return subsample(rows, max_clips, seed)
