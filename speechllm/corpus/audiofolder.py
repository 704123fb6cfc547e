"""Reading an HF-style audiofolder (audio files + metadata.csv) into stage inputs.

`datasets`' own audiofolder loader decodes audio through torchcodec, which has no working CPU build
here, so metadata.csv is read with `csv` and audio stays a file path, read later with soundfile.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

# Columns with a meaning of their own; every other metadata column is a label.
RESERVED = {"file_name", "split", "clip_id"}


class AudioFolderError(ValueError):
    """An audiofolder that cannot be read at all (no metadata.csv, no file_name column, ...)."""


CORPUS_MARKER = "_corpus.json"  # the settings a generated corpus was written with


def corpus_is_current(out_dir: Path, fingerprint: dict) -> bool:
    """A corpus written by a generator (espeak, a `datasets` dataset) is current when its metadata.csv exists
    and its marker holds the same settings."""
    marker = out_dir / CORPUS_MARKER
    return (
        (out_dir / "metadata.csv").is_file()
        and marker.is_file()
        and json.loads(marker.read_text()) == fingerprint
    )


def read_audiofolder(path: str | os.PathLike, default_split: str = "train") -> list[dict]:
    """One input row per metadata.csv line.

    Files named in metadata.csv but missing on disk are kept as inputs, so the describe stage rejects
    them with a reason and kept + rejected still equals the number of lines.

    Args:
        path: the folder holding metadata.csv (`file_name` relative to it).
        default_split: split of rows without a `split` value.

    Returns:
        Rows with `clip_id` (metadata's `clip_id`, else file_name without its extension), `audio_path`
        (absolute), `split`, and `label_<column>` (str) for every other column.

    Raises:
        AudioFolderError: no metadata.csv, no `file_name` column, no rows, an empty file name or one
            outside the folder, empty or repeated column names, or duplicate clip ids.
    """
    root = Path(path).resolve()
    meta = root / "metadata.csv"
    if not meta.exists():
        raise AudioFolderError(f"{root}: no metadata.csv (an audiofolder needs one with a file_name column)")
    try:
        return _read_metadata(root, meta, default_split)
    except UnicodeDecodeError as err:
        line = meta.read_bytes()[: err.start].count(b"\n") + 1
        raise AudioFolderError(
            f"{meta}, line {line}: not UTF-8 (byte {err.object[err.start:err.start + 1]!r}); save it as UTF-8"
        ) from None


def _read_metadata(root: Path, meta: Path, default_split: str) -> list[dict]:
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would hide the first column name.
    with open(meta, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames:
            # "file_name, split" has a space after the comma; "split" must still be the split column.
            reader.fieldnames = [c.strip() for c in reader.fieldnames]
        if not reader.fieldnames or "file_name" not in reader.fieldnames:
            raise AudioFolderError(f"{meta}: needs a file_name column, has {reader.fieldnames}")
        if len(set(reader.fieldnames)) != len(reader.fieldnames) or "" in reader.fieldnames:
            raise AudioFolderError(f"{meta}: empty or repeated column names in {reader.fieldnames}")
        labels = [c for c in reader.fieldnames if c not in RESERVED]
        rows, lines, explicit_id = [], [], []
        for line in reader:
            if not any((v or "").strip() for v in line.values() if isinstance(v, str)):
                continue  # a blank row (spreadsheets end with ",,,"): nothing to describe, nothing lost
            name = (line.get("file_name") or "").strip()
            if not name:
                raise AudioFolderError(f"{meta}, line {reader.line_num}: empty file_name")
            # A name that leaves the folder (absolute, ../) is a metadata.csv written for another place:
            # refused at once, before any stage describes a corpus that is partly somewhere else.
            if not (root / name).resolve().is_relative_to(root):
                raise AudioFolderError(
                    f"{meta}, line {reader.line_num}: file_name {name!r} is outside {root}; name files "
                    "relative to the folder that holds metadata.csv"
                )
            lines.append(reader.line_num)
            explicit_id.append(bool((line.get("clip_id") or "").strip()))
            rows.append(
                {
                    "clip_id": (line.get("clip_id") or "").strip() or os.path.splitext(name)[0],
                    "audio_path": str(root / name),
                    "split": (line.get("split") or "").strip() or default_split,
                    **{f"label_{c}": (line.get(c) or "").strip() for c in labels},
                }
            )
    if not rows:
        raise AudioFolderError(f"{meta}: no rows below the header, nothing to describe")
    # Two files with one stem (clip.mp3, clip.ogg) are two clips: ids taken from the stem keep the extension.
    stems = Counter(r["clip_id"] for r, given in zip(rows, explicit_id, strict=True) if not given)
    for r, given in zip(rows, explicit_id, strict=True):
        if not given and stems[r["clip_id"]] > 1:
            r["clip_id"] = os.path.relpath(r["audio_path"], root)
    seen: dict[str, int] = {}
    for r, line_num in zip(rows, lines, strict=True):
        if r["clip_id"] in seen:
            what = "file" if r["clip_id"] == os.path.relpath(r["audio_path"], root) else "clip id"
            raise AudioFolderError(
                f"{meta}, lines {seen[r['clip_id']]} and {line_num}: the same {what} {r['clip_id']!r} twice; "
                "keep one row per clip"
            )
        seen[r["clip_id"]] = line_num
    return rows
