"""Where prepared data lives on disk: the one module that spells out the layout.

<data_dir>/<name>/corpus/            generated corpora (espeak, datasets)
<data_dir>/<name>/described/         the describe stage
<data_dir>/<name>/targets/<folder>/  the targets stage (target.folder, by default the mode)
<data_dir>/<name>/features/          the encoder-feature cache (training)
<data_dir>/<name>/rejects.jsonl      inputs refused before describing
<data_dir>/replay/<source>/          text replay, shared by every dataset
"""

from __future__ import annotations

from pathlib import Path


def dataset_dir(data_dir: str | Path, name: str) -> Path:
    """A dataset's folder."""
    return Path(data_dir) / name


def corpus_dir(data_dir: str | Path, name: str) -> Path:
    return dataset_dir(data_dir, name) / "corpus"


def described_dir(data_dir: str | Path, name: str) -> Path:
    return dataset_dir(data_dir, name) / "described"


def targets_dir(data_dir: str | Path, name: str, mode: str, folder: str | None = None) -> Path:
    """A target set's folder: `target.folder` when set (several sets of one mode side by side), else the mode."""
    return dataset_dir(data_dir, name) / "targets" / (folder or mode)


def features_dir(data_dir: str | Path, name: str) -> Path:
    return dataset_dir(data_dir, name) / "features"


def replay_dir(data_dir: str | Path, source: str) -> Path:
    return Path(data_dir) / "replay" / source
