"""The clips an evaluation runs on: the described test split, or any labelled audiofolder.

Described data (``{data_dir}/{name}/described/``) already has everything: audio path, gold
``label_*`` columns, the Whisper transcript the speech prompt uses, and the description the text LLM
reads for the ceiling. An audiofolder has audio and labels only; its descriptions come from the
project's describe machinery when it can run (transcript and signal attributes from the audio, gold
labels for the rest) and otherwise are rendered from the labels alone, which the report notes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from speechllm.corpus.audiofolder import AudioFolderError, read_audiofolder
from speechllm.corpus.hf import dataset_columns, write_hf_corpus
from speechllm.data.describe_stage import describe_processor
from speechllm.data.described import subsample
from speechllm.eval.tasks import Item, normalize_answer

log = logging.getLogger(__name__)


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
    items: list | None = None  # an external instruction set's own questions (None: the unseen tasks)


def load_audiofolder(
    folder: str, split: str = "test", max_clips: int | None = None, seed: int = 0, every_row: bool = False
) -> EvalData:
    """Rows of a labelled audiofolder (``metadata.csv`` + audio files), read as the prepare stage reads it.

    Every metadata column other than ``file_name``/``split``/``clip_id`` is a label: ``gender``
    becomes ``label_gender`` (a column already named ``label_gender`` is kept as is). A folder with no
    split values at all (a benchmark, a folder of one's own recordings) was never trained on: every row
    is evaluated. Otherwise rows of `split` are kept, and rows without a split value count as "train",
    as they do in data preparation, so a clip is never trained on and evaluated as held out.

    Args:
        folder: the audiofolder.
        split: split to evaluate.
        max_clips: keep N rows (see :func:`subsample`; None: all).
        every_row: evaluate every row whatever its split (an instruction set brought for evaluation).
        seed: the draw's seed.

    Returns:
        EvalData (no descriptions yet; see :func:`add_descriptions`).

    Raises:
        EvalDataError: not an audiofolder, no rows of `split`, or no audio file present.
    """
    try:
        records = read_audiofolder(folder, default_split="")
    except AudioFolderError as e:
        raise EvalDataError(f"eval.audiofolder={folder!r}: {e}") from e
    notes: list[str] = []
    if every_row:
        pass
    elif records and not any(r["split"] for r in records):
        notes.append(f"{folder}: no split values, so every one of its {len(records)} rows is evaluated")
    else:
        splits = sorted({r["split"] or "train" for r in records})
        records = [r for r in records if r["split"] == split]
    if not records:
        raise EvalDataError(
            f"{folder!r}: no rows with split=={split!r} (splits present: {splits}); rows without a split "
            f"value count as 'train', so mark the held-out rows split={split} in metadata.csv"
        )
    rows: list[dict] = []
    missing: list[str] = []
    for rec in records:
        if not os.path.isfile(rec["audio_path"]):
            missing.append(os.path.basename(rec["audio_path"]))
            continue
        # A metadata column already called label_x comes back as label_label_x.
        rows.append({(k[len("label_") :] if k.startswith("label_label_") else k): v for k, v in rec.items()})
    if missing:
        notes.append(
            f"{len(missing)} file(s) listed in metadata.csv are missing and were skipped: {missing[:5]}"
        )
    if not rows:
        raise EvalDataError(f"{folder!r}: none of the listed audio files exists (e.g. {missing[:3]})")
    return EvalData(rows=subsample(rows, max_clips, seed), name=os.path.abspath(folder), notes=notes)


INSTRUCTION_COLUMNS = ("instruction", "answer", "task", "choices")


def _dataset_as_audiofolder(source: str, root: Path) -> Path:
    """A `datasets` dataset (save_to_disk folder, parquet files or hub id) with an `audio` column and the
    instruction columns, written once as an audiofolder under `root` (see `speechllm.corpus.hf`)."""
    import hashlib

    names = dataset_columns(source)
    cfg = {"path": source, "columns": {"audio": "audio"},
           "labels": {c: c for c in INSTRUCTION_COLUMNS if c in names}}  # fmt: skip
    return write_hf_corpus(root / hashlib.sha256(source.encode()).hexdigest()[:16], cfg)


def load_instruction_set(
    folder: str, max_clips: int | None = None, seed: int = 0, cache_dir: str | None = None
) -> EvalData:
    """An external instruction set (Dynamic-SUPERB / AIR-Bench style): an audiofolder whose
    ``metadata.csv`` has, besides ``file_name``, an ``instruction`` and a reference ``answer`` per row,
    and optionally ``task`` (rows are scored per task; default ``instructions``) and ``choices``
    (``yes|no``: the answer is parsed to one of them, as the unseen tasks are; without, the answer must
    match the reference exactly after :func:`speechllm.eval.tasks.normalize_answer`). Every row is
    evaluated: a set brought for evaluation was not trained on. Other columns are labels. A `datasets`
    dataset with the same columns (and `audio`) is read too: written once as an audiofolder under
    `cache_dir`.

    Raises:
        EvalDataError: not an audiofolder, no instruction or answer column, or no audio file present.
    """
    if cache_dir is not None and not (Path(folder) / "metadata.csv").is_file():
        folder = str(_dataset_as_audiofolder(folder, Path(cache_dir) / "instruction-sets"))
    data = load_audiofolder(folder, max_clips=max_clips, seed=seed, every_row=True)
    missing = [c for c in ("instruction", "answer") if not any(f"label_{c}" in r for r in data.rows)]
    if missing:
        raise EvalDataError(f"eval.instruction_set={folder!r}: metadata.csv needs the column(s) {missing}")
    items = []
    for i, row in enumerate(data.rows):
        spec = {c: str(row.pop(f"label_{c}", "") or "").strip() for c in INSTRUCTION_COLUMNS}
        if not spec["instruction"] or not spec["answer"]:
            data.notes.append(f"{row['clip_id']}: no instruction or answer; not scored")
            continue
        choices = tuple(dict.fromkeys(c.strip().lower() for c in spec["choices"].split("|") if c.strip()))
        if choices and spec["answer"].lower() not in choices:
            raise EvalDataError(
                f"{folder!r}, {row['clip_id']}: answer {spec['answer']!r} is not one of {choices}"
            )
        task = spec["task"] or "instructions"
        gold = spec["answer"].lower() if choices else normalize_answer(spec["answer"])
        items.append(Item(i, task, spec["instruction"], gold, choices, exact=not choices))
    if not items:
        raise EvalDataError(f"eval.instruction_set={folder!r}: no row has both an instruction and an answer")
    data.items = items
    data.notes.append(
        f"external instruction set {folder}: {len(items)} instructions, each scored against its reference"
    )
    return data


def describe_rows(rows: list[dict], describe_cfg: dict) -> tuple[list[dict], list[dict]]:
    """Describe audiofolder rows in memory with the project's describe machinery.

    Args:
        rows: rows with ``clip_id``, ``audio_path``, ``label_*``.
        describe_cfg: the ``describe`` config (``attributes``, ``renderer``, ``max_seconds``,
            ``attributes_dir``, ``modules``, ``overrides``), as the prepare stage uses it.

    Returns:
        (described rows: inputs + attribute columns (``transcript``, ...) + ``description``, rejects).
    """
    result = describe_processor(describe_cfg)(rows)
    return result.rows, result.rejects


def label_description(row: dict) -> str:
    """A description rendered from a row's gold labels (the fallback when the audio is not described).

    Args:
        row: a row with ``label_*`` columns (and ``transcript`` or ``label_text`` if known).

    Returns:
        DeSTA2-style text, e.g. ``"Hello." (Gender: Female, Accent: British)``.
    """
    text = row.get("transcript") or row.get("label_text") or ""
    attrs = [
        f"{k[len('label_') :].replace('_', ' ').title()}: {str(v).strip().title()}"
        for k, v in row.items()
        if k.startswith("label_") and k not in ("label_text", "label_transcript") and str(v).strip()
    ]
    head = f'"{text.strip()}" ' if text.strip() else ""
    return (head + (f"({', '.join(attrs)})" if attrs else "")).strip() or "(no information)"


def add_descriptions(data: EvalData, describe_cfg: dict | None) -> EvalData:
    """Give every row a ``description`` (and the ASR ``transcript`` when the describer makes one).

    Args:
        data: rows from :func:`load_audiofolder`.
        describe_cfg: the ``describe`` config; None skips describing (descriptions from labels).

    Returns:
        The same EvalData: rows the describer rejected are dropped (they cannot be read), the rest
        updated; a note says how descriptions were made.
    """
    if describe_cfg is not None:
        try:
            described, rejects = describe_rows(data.rows, describe_cfg)
        except Exception as e:  # noqa: BLE001 - any describer failure falls back, and the report says so
            log.warning(
                "describing the audiofolder failed (%s: %s); using label descriptions", type(e).__name__, e
            )
            data.notes.append(
                f"descriptions: rendered from gold labels (describe failed: {type(e).__name__}: {e})"
            )
        else:
            by_id = {r["clip_id"]: r for r in described}
            for rej in rejects:
                data.notes.append(f"clip {rej['clip_id']} rejected by describe: {rej['reason']}")
            if data.items is not None:  # an instruction set's questions follow their clips' new places
                kept = [i for i, row in enumerate(data.rows) if row["clip_id"] in by_id]
                where = {old: new for new, old in enumerate(kept)}
                data.items = [
                    dataclasses.replace(it, row=where[it.row]) for it in data.items if it.row in where
                ]
            data.rows = [
                {
                    **row,
                    **{
                        k: by_id[row["clip_id"]][k]
                        for k in ("description", "transcript")
                        if by_id[row["clip_id"]].get(k)
                    },
                }
                for row in data.rows
                if row["clip_id"] in by_id
            ]
            data.notes.append(
                f"descriptions: the describe pipeline on the audio (renderer {describe_cfg['renderer']})"
            )
    else:
        data.notes.append("descriptions: rendered from gold labels")
    for row in data.rows:
        if not row.get("description"):
            row["description"] = label_description(row)
    return data
