"""A Hugging Face `datasets` dataset as a corpus: its audio and chosen columns written out as an
audiofolder (audio files + metadata.csv), which the describe stage then reads like any other.

The source is a hub id (`load_dataset`), a `save_to_disk` folder (`load_from_disk`) or a folder of
parquet/arrow files (`load_dataset(<folder>)`); `streaming: true` reads a hub dataset row by row without
downloading it whole. Audio may be an `Audio` column (decoded here with soundfile from its bytes or
path, so no torchcodec is needed), a column of file paths, or a dict column with `array` and
`sampling_rate`. Rows whose audio cannot be read are listed with the reason in `hf_rejects.jsonl`.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speechllm.audio import write_audio
from speechllm.config import ConfigError
from speechllm.corpus.audiofolder import CORPUS_MARKER, corpus_is_current

logger = logging.getLogger(__name__)

# The `data` keys of `data/hf.yaml` (besides name, generate and path, which every data config has).
CONFIG_KEYS = ("source_split", "streaming", "max_rows", "columns", "labels")
VERSION = 1  # part of the fingerprint: raised when the same config would write a different folder


def _load(source: str, split: str | None, streaming: bool):
    import datasets

    folder = Path(source).expanduser()
    if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
        data = datasets.load_from_disk(str(folder))
    else:
        data = datasets.load_dataset(str(folder) if folder.exists() else source, streaming=streaming)
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None and len(data) == 1:
            split = next(iter(data))  # one split (a parquet folder loads as "train"): that is the dataset
        if split is None:
            raise ConfigError(
                f"data.path={source!r} has splits {list(data)}: choose one with data.source_split"
            )
        if split not in data:
            raise ConfigError(f"data.source_split={split!r}: {source!r} has splits {list(data)}")
        data = data[split]
    return data


def dataset_columns(source: str, split: str | None = None) -> list[str]:
    """The column names of a dataset (hub id or local folder)."""
    return list(_load(source, split, streaming=True).column_names or [])


def _undecoded(data, column: str):
    """The audio column as raw bytes/paths: `datasets`' own decoding needs torchcodec (no CPU build here)."""
    import datasets

    feature = data.features.get(column) if data.features is not None else None
    if isinstance(feature, datasets.Audio):
        return data.cast_column(column, datasets.Audio(decode=False))
    return data


def _read_audio(value: Any, base: Path | None) -> tuple[np.ndarray, int]:
    """(samples, rate) from an `Audio` value ({bytes, path} or {array, sampling_rate}) or a file path."""
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() or base is None else base / value
        return sf.read(str(path), dtype="float32", always_2d=False)
    if isinstance(value, dict):
        if value.get("array") is not None:
            rate = value.get("sampling_rate")
            if not rate:
                raise ValueError("audio array without a sampling_rate")
            return np.asarray(value["array"], dtype=np.float32), int(rate)
        if value.get("bytes"):
            return sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=False)
        if value.get("path"):
            return _read_audio(value["path"], base)
    raise ValueError(f"no audio in {type(value).__name__} value")


def write_hf_corpus(out_dir: str | os.PathLike, cfg: dict) -> Path:
    """Write a dataset's audio and columns as an audiofolder in `out_dir` (skipped when current).

    Args:
        out_dir: the corpus folder (`{paths.data_dir}/{data.name}/corpus`).
        cfg: the `data` config: `path` (hub id or local folder), `source_split`, `streaming`, `max_rows`, `columns` (which source
            column holds `audio`, and optionally `clip_id`, `split`, `text`) and `labels` (label name ->
            source column, e.g. `{gender: speaker_gender}`).

    Returns:
        `out_dir`, holding `metadata.csv` (`file_name`, `clip_id`, `split`, `text` and the labels).

    Raises:
        ConfigError: a mapped column the dataset does not have, or no readable audio at all.
    """
    out_dir = Path(out_dir)
    fingerprint = {"version": VERSION, "path": cfg["path"], **{k: cfg.get(k) for k in CONFIG_KEYS}}
    if corpus_is_current(out_dir, fingerprint):
        logger.info("corpus: %s is current", out_dir)
        return out_dir
    columns = dict(cfg.get("columns") or {})
    labels = dict(cfg.get("labels") or {})
    audio_column = columns.get("audio", "audio")
    data = _load(str(cfg["path"]), cfg.get("source_split"), bool(cfg.get("streaming")))
    names = list(data.column_names or [])
    wanted = {"audio": audio_column, **{k: v for k, v in columns.items() if k != "audio" and v},
              **{f"label {k}": v for k, v in labels.items()}}  # fmt: skip
    missing = {k: v for k, v in wanted.items() if names and v not in names}
    if missing:
        raise ConfigError(
            f"data.path={cfg['path']!r} has no column(s) "
            + ", ".join(f"{v!r} (for {k})" for k, v in missing.items())
            + f"; its columns: {names}"
        )
    data = _undecoded(data, audio_column)
    source = Path(str(cfg["path"])).expanduser()
    base = source if source.exists() else None  # relative audio paths are relative to a local dataset
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    header = ["file_name", "clip_id", "split", *(["text"] if columns.get("text") else []), *labels]
    lines, rejects = [], []
    for index, row in itertools.islice(enumerate(data), cfg.get("max_rows")):
        clip_id = str(row[columns["clip_id"]]) if columns.get("clip_id") else f"{index:06d}"
        try:
            samples, rate = _read_audio(row[audio_column], base)
        except Exception as err:  # a corrupt or missing file: listed, never silently lost
            rejects.append({"clip_id": clip_id, "reason": f"audio not readable: {err}"})
            continue
        if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
            samples = samples.T  # (channels, frames) as arrays come -> (frames, channels) as files store
        file_name = f"audio/{clip_id}.wav"
        write_audio(out_dir / file_name, samples, rate, subtype="FLOAT")
        line = {"file_name": file_name, "clip_id": clip_id,
                "split": str(row[columns["split"]]) if columns.get("split") else ""}  # fmt: skip
        if columns.get("text"):
            line["text"] = str(row[columns["text"]] or "")
        line.update({name: "" if row[col] is None else str(row[col]) for name, col in labels.items()})
        lines.append(line)
    if not lines:
        raise ConfigError(f"data.path={cfg['path']!r}: no row with readable audio ({len(rejects)} rejected)")
    with open(out_dir / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(lines)
    (out_dir / "hf_rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejects))
    (out_dir / CORPUS_MARKER).write_text(json.dumps(fingerprint))  # last: the folder is complete
    logger.info("corpus: %d clips written from %s (%d unreadable) -> %s", len(lines), cfg["path"],
                len(rejects), out_dir)  # fmt: skip
    return out_dir
