"""The clips an evaluation runs on: the described test split, or any labelled audiofolder.

Described data (``{data_dir}/{name}/described/``) already has everything: audio path, gold
``label_*`` columns, the Whisper transcript the speech prompt uses, and the description the text LLM
reads for the ceiling. An audiofolder has audio and labels only; its descriptions come from the
project's describe machinery when it can run (transcript and signal attributes from the audio, gold
labels for the rest) and otherwise are rendered from the labels alone, which the report notes.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Plain metadata columns accepted as labels when no `label_<name>` column exists.
PLAIN_LABEL_COLUMNS = ("gender", "accent", "pitch", "speed", "volume", "emotion", "age", "text")


class EvalDataError(ValueError):
    """Evaluation data that cannot be used; the message names the path and what to do."""


@dataclass
class EvalData:
    """Rows to evaluate.

    Attributes:
        rows: dicts with ``clip_id``, ``audio_path``, ``label_*``, optional ``transcript`` and
            ``description``.
        name: what was evaluated (dataset name or folder), for the report.
        notes: things the report should say (fallbacks taken, rows dropped).
    """

    rows: list[dict]
    name: str
    notes: list[str] = field(default_factory=list)


def load_described(data_dir: str, name: str, split: str = "test", max_clips: int | None = None) -> EvalData:
    """The described dataset's rows of one split.

    Args:
        data_dir: ``paths.data_dir``.
        name: dataset name (``eval.data``).
        split: which split to keep.
        max_clips: keep the first N rows in clip_id order (None: all).

    Returns:
        EvalData.

    Raises:
        EvalDataError: the folder is missing or the split is empty.
    """
    import datasets

    path = os.path.join(data_dir, name, "described")
    if not os.path.isdir(path):
        raise EvalDataError(
            f"no described dataset at {path!r}: run `python data_prep/prepare.py data={name}` first, "
            "or pass eval.audiofolder=DIR to evaluate a labelled audiofolder"
        )
    ds = datasets.load_from_disk(path)
    if "split" in ds.column_names:
        splits = sorted(set(ds["split"]))
        idx = [i for i, s in enumerate(ds["split"]) if s == split]
        if not idx:
            raise EvalDataError(f"{path!r} has no rows with split=={split!r} (splits present: {splits})")
        ds = ds.select(idx)
    rows = sorted((dict(r) for r in ds), key=lambda r: str(r.get("clip_id", "")))
    if max_clips:
        rows = rows[:max_clips]
    return EvalData(rows=rows, name=f"{name}/described[{split}]")


def load_audiofolder(folder: str, split: str = "test", max_clips: int | None = None) -> EvalData:
    """Rows of a labelled audiofolder (``metadata.csv`` + audio files).

    Labels are the ``label_*`` columns; plain columns named like a task (``gender``, ``accent``,
    ``text``, ...) are used as ``label_<name>`` when the ``label_`` column is absent. With a ``split``
    column, rows of `split` are kept (all rows when the column is absent).

    Args:
        folder: the audiofolder.
        split: split to keep when the metadata has a ``split`` column.
        max_clips: keep the first N rows (file order).

    Returns:
        EvalData (no descriptions yet; see :func:`add_descriptions`).

    Raises:
        EvalDataError: missing folder/metadata.csv/file_name column, no rows, missing audio files.
    """
    meta = os.path.join(folder, "metadata.csv")
    if not os.path.isfile(meta):
        raise EvalDataError(f"{folder!r} is not an audiofolder: no metadata.csv")
    with open(meta, newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
        columns = reader.fieldnames or []
    if "file_name" not in columns:
        raise EvalDataError(f"{meta!r} has no file_name column (columns: {columns})")
    notes: list[str] = []
    if "split" in columns:
        kept = [r for r in records if (r.get("split") or "").strip() == split]
        if not kept:
            raise EvalDataError(f"{meta!r} has no rows with split=={split!r}")
        records = kept
    rows: list[dict] = []
    missing: list[str] = []
    for rec in records:
        path = os.path.abspath(os.path.join(folder, rec["file_name"]))
        if not os.path.isfile(path):
            missing.append(rec["file_name"])
            continue
        row = {"clip_id": os.path.splitext(rec["file_name"])[0], "audio_path": path}
        for col, value in rec.items():
            if col.startswith("label_"):
                row[col] = value
        for col in PLAIN_LABEL_COLUMNS:
            if col in rec and f"label_{col}" not in row:
                row[f"label_{col}"] = rec[col]
        rows.append(row)
    if missing:
        notes.append(f"{len(missing)} file(s) listed in metadata.csv are missing and were skipped: {missing[:5]}")
    if not rows:
        raise EvalDataError(f"{folder!r}: no usable rows (missing files: {missing[:5]})")
    if max_clips:
        rows = rows[:max_clips]
    return EvalData(rows=rows, name=os.path.abspath(folder), notes=notes)


def label_description(row: dict) -> str:
    """A description rendered from a row's gold labels (the fallback when the audio is not described).

    Args:
        row: a row with ``label_*`` columns (and ``transcript`` or ``label_text`` if known).

    Returns:
        DeSTA2-style text, e.g. ``"Hello." (Gender: Female, Accent: British)``.
    """
    text = row.get("transcript") or row.get("label_text") or ""
    attrs = [
        f"{k[len('label_'):].replace('_', ' ').title()}: {str(v).strip().title()}"
        for k, v in row.items()
        if k.startswith("label_") and k not in ("label_text", "label_transcript") and str(v).strip()
    ]
    head = f'"{text.strip()}" ' if text.strip() else ""
    return (head + (f"({', '.join(attrs)})" if attrs else "")).strip() or "(no information)"


def add_descriptions(data: EvalData, describe_fn=None) -> EvalData:
    """Give every row a ``description`` (and a ``transcript`` when the describer provides one).

    Args:
        data: rows from :func:`load_audiofolder`.
        describe_fn: rows -> rows with ``description`` (and ``transcript``), e.g. the project's
            describe machinery; None or a failure falls back to :func:`label_description`.

    Returns:
        The same EvalData, rows updated, with a note saying which way descriptions were made.
    """
    if describe_fn is not None:
        try:
            described = describe_fn(data.rows)
            by_id = {r["clip_id"]: r for r in described}
            for row in data.rows:
                d = by_id.get(row["clip_id"], {})
                for key in ("description", "transcript"):
                    if d.get(key) and not row.get(key):
                        row[key] = d[key]
            data.notes.append("descriptions: the describe pipeline on the audio")
        except Exception as e:  # noqa: BLE001 - any describer failure falls back, and the report says so
            log.warning("describing the audiofolder failed (%s); using label descriptions", e)
            data.notes.append(f"descriptions: rendered from gold labels (describe failed: {e})")
    else:
        data.notes.append("descriptions: rendered from gold labels (no describer available)")
    for row in data.rows:
        if not row.get("description"):
            row["description"] = label_description(row)
    return data
