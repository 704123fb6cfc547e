"""Resumable, fingerprinted, shardable dataset stages.

Every data-preparation stage (describe, targets, replay) maps a list of input rows to output rows
and rejects. `run_stage` gives each one the behaviour of a real data tool:

- **Skip when current**: a finished stage records its config fingerprint; a rerun with the same
  fingerprint loads the result and does nothing else. A changed fingerprint discards the old output.
- **Resume after a kill**: inputs are processed in fixed chunks and each finished chunk is saved
  atomically (written to a temporary folder, then renamed) as a *part*. A killed run loses at most the
  chunk in flight; the rerun skips finished parts, so no row is lost or duplicated.
- **Shards**: `shard=(i, n)` takes chunks i, i+n, i+2n, ...; several processes or machines (sharing the
  folder) split the work. Whichever shard finds every part finished merges them.
- **Rejects**: inputs that cannot be used come back as rejects with a reason and are written to
  `rejects.jsonl`, so kept + rejected = inputs.

Layout of `out_dir` (the final dataset is an ordinary `save_to_disk` folder, so
`datasets.load_from_disk(out_dir)` works too):
    _fingerprint.json      fingerprint the parts were made with
    _parts/part-00000/     one finished chunk: a dataset (absent when the chunk kept no row) + rejects.jsonl
    data-*.arrow, state.json, dataset_info.json    the merged dataset, once complete
    rejects.jsonl          all rejects, once complete
    _complete.json         fingerprint, counts and time; written last
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from speechllm.config import ConfigError, differences
from speechllm.digests import key_digest

logger = logging.getLogger(__name__)

# Bumped when the on-disk layout changes, so old folders are rebuilt rather than misread.
STAGE_FORMAT = 1
_PARTS = "_parts"
_FINGERPRINT = "_fingerprint.json"
_COMPLETE = "_complete.json"
_REJECTS = "rejects.jsonl"


@dataclass
class StageResult:
    """What a stage's `process` function returns for one chunk of inputs.

    Attributes:
        rows: output rows (dicts with the same columns for every row of the stage).
        rejects: one dict per unusable input: the input's key, `"file"` where there is one, and
            `"reason"`.
    """

    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def fingerprint_of(config: Any) -> str:
    """A stable hash of a JSON-serialisable config (dict key order does not matter)."""
    return key_digest(config, length=16)


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """Parse `"i/n"` (or pass through `(i, n)`) and check 0 <= i < n."""
    if isinstance(shard, str):
        try:
            index, count = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ConfigError(f"shard must look like 'i/n' (e.g. 0/4), got {shard!r}") from None
    else:
        index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard={index}/{count} is out of range: need 0 <= i < n")
    return index, count


def read_json(path: Path) -> dict | None:
    """A JSON file's contents, or None when it is missing or unreadable (a stage's records, a run's report)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stage_fingerprint(fingerprint: dict, inputs: list[dict], chunk_size: int) -> str:
    # The parts only line up when the inputs and their chunking are the same, so both are hashed in:
    # whole rows, not just keys, since a stage copies columns (paths, splits) into its output.
    digest = hashlib.sha256()
    for r in inputs:
        digest.update(json.dumps(r, sort_keys=True, default=str).encode() + b"\n")
    return fingerprint_of(
        {
            "format": STAGE_FORMAT,
            "config": fingerprint,
            "chunk_size": chunk_size,
            "inputs": digest.hexdigest(),
        }
    )


def is_current(out_dir: str | Path, fingerprint: dict | str | None = None) -> bool:
    """Whether `out_dir` holds a finished stage (made with `fingerprint`, when one is given).

    `fingerprint` here is the one recorded by `run_stage` (`_complete.json["config"]`), i.e. the
    caller's config dict.
    """
    done = read_json(Path(out_dir) / _COMPLETE)
    if done is None:
        return False
    return fingerprint is None or done.get("config") == fingerprint_of(fingerprint)


def is_finished(out_dir: str | Path) -> bool:
    """Whether a stage folder holds a finished dataset (`_complete.json`, written last)."""
    return (Path(out_dir) / _COMPLETE).is_file()


def settings_differences(out_dir: str | Path, fingerprint: dict) -> list[str]:
    """What differs between the settings a finished stage was made with and `fingerprint`.

    Returns:
        [] when the stage is current; else dotted keys with both values (``target.llm: 'a' != 'b'``),
        or one line saying the stage predates recorded settings.
    """
    done = read_json(Path(out_dir) / _COMPLETE)
    if done is None:
        return [f"not finished (no {_COMPLETE}: interrupted, or still running)"]
    if done.get("config") == fingerprint_of(fingerprint):
        return []
    if "settings" not in done:
        return ["settings not recorded (made by an older version)"]
    return differences(json.loads(json.dumps(done["settings"], default=str)), json.loads(json.dumps(fingerprint, default=str)))


def load_stage(out_dir: str | Path) -> datasets.Dataset:
    """Load a finished stage's dataset; a clear error says when it is missing or unfinished."""
    out_dir = Path(out_dir)
    if not (out_dir / _COMPLETE).exists():
        raise FileNotFoundError(
            f"{out_dir} is not a finished data stage (no {_COMPLETE}); run data_prep/prepare.py first"
        )
    return datasets.load_from_disk(str(out_dir))


def read_rejects(out_dir: str | Path) -> list[dict]:
    """The rejects of a finished stage, one dict per rejected input."""
    path = Path(out_dir) / _REJECTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_stats(out_dir: str | Path) -> dict:
    """Counts and time recorded when the stage finished (`rows`, `rejects`, `seconds`)."""
    return read_json(Path(out_dir) / _COMPLETE) or {}


def _chunks(inputs: list[dict], chunk_size: int) -> list[list[dict]]:
    return [inputs[i : i + chunk_size] for i in range(0, len(inputs), chunk_size)]


def _part_dir(out_dir: Path, index: int) -> Path:
    return out_dir / _PARTS / f"part-{index:05d}"


def _write_part(out_dir: Path, index: int, result: StageResult) -> None:
    final = _part_dir(out_dir, index)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if result.rows:
        datasets.Dataset.from_list(result.rows).save_to_disk(str(tmp / "rows"))
    with open(tmp / _REJECTS, "w") as f:
        for reject in result.rejects:
            f.write(json.dumps(reject, default=str) + "\n")
    # The rename is the commit point: a part folder without the .tmp suffix is always whole.
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        # Another process running the same stage (same fingerprint, so same inputs) wrote this part
        # first; its copy is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare_dir(out_dir: Path, stage_fp: str) -> None:
    """Make `out_dir` hold parts of this fingerprint only: anything made with another one goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = read_json(out_dir / _FINGERPRINT)
    if recorded is not None and recorded.get("fingerprint") == stage_fp:
        return
    if recorded is not None or any(out_dir.iterdir()):
        logger.info("%s: config or inputs changed, discarding the previous output", out_dir)
        for child in out_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    tmp = out_dir / f"{_FINGERPRINT}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"fingerprint": stage_fp}))
    os.replace(tmp, out_dir / _FINGERPRINT)


def _merge(out_dir: Path, n_chunks: int, key: str, config: dict, stage_fp: str, seconds: float) -> None:
    parts = [_part_dir(out_dir, i) for i in range(n_chunks)]
    tables = [datasets.load_from_disk(str(p / "rows")) for p in parts if (p / "rows").exists()]
    if tables:
        try:
            merged = datasets.concatenate_datasets(tables)
        except ValueError:
            # Chunks infer their own column types (a column that is all None in one chunk is typed
            # `null`); rebuilding from rows lets Arrow find the common type.
            merged = datasets.Dataset.from_list([row for t in tables for row in t])
    else:
        # A stage that kept nothing still yields a loadable (empty) dataset with its key column.
        merged = datasets.Dataset.from_dict(
            {key: []}, features=datasets.Features({key: datasets.Value("string")})
        )
    rejects = [line for p in parts for line in (p / _REJECTS).read_text().splitlines() if line.strip()]

    # The merge lock is held: any other _final.tmp-* was left by a merger that died (a kill, a full disk).
    for stale in out_dir.glob("_final.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f"_final.tmp-{os.getpid()}"
    try:
        # num_shards=1: datasets writes no shard at all for an empty table otherwise, and cannot load it back.
        merged.save_to_disk(str(tmp), num_shards=1 if len(merged) == 0 else None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for item in tmp.iterdir():
        os.replace(item, out_dir / item.name)
    tmp.rmdir()
    (out_dir / _REJECTS).write_text("".join(r + "\n" for r in rejects))
    summary = {
        "config": fingerprint_of(config),
        "settings": config,  # readable, so a consumer can name what differs from its own settings
        "fingerprint": stage_fp,
        "rows": len(merged),
        "rejects": len(rejects),
        "seconds": round(seconds, 2),
    }
    complete_tmp = out_dir / f"{_COMPLETE}.tmp-{os.getpid()}"
    complete_tmp.write_text(json.dumps(summary, indent=2))
    os.replace(complete_tmp, out_dir / _COMPLETE)
    shutil.rmtree(out_dir / _PARTS, ignore_errors=True)


def _results(
    process: Callable[[list[dict]], StageResult], todo: list[tuple[int, list[dict]]], num_proc: int
) -> Iterator[tuple[int, StageResult]]:
    if num_proc <= 1:
        for index, chunk in todo:
            yield index, process(chunk)
        return
    # spawn, not fork: forking a process that already holds torch's thread pools can deadlock.
    with multiprocessing.get_context("spawn").Pool(num_proc) as pool:
        indices = [index for index, _ in todo]
        yield from zip(indices, pool.imap(process, [chunk for _, chunk in todo]), strict=True)


def run_stage(
    out_dir: str | Path,
    fingerprint: dict,
    inputs: list[dict],
    process: Callable[[list[dict]], StageResult],
    *,
    key: str = "clip_id",
    chunk_size: int = 64,
    shard: str | tuple[int, int] = (0, 1),
    desc: str = "stage",
    num_proc: int = 1,
) -> datasets.Dataset | None:
    """Run (or resume, or skip) one data stage.

    Args:
        out_dir: the stage's folder.
        fingerprint: JSON-serialisable description of everything that determines the output
            (the stage's config, model sources, attribute configs, ...).
        inputs: input rows; each must have a unique `key`. Their order fixes the chunking.
        process: maps a chunk of inputs to a `StageResult`. With `num_proc > 1` it must be picklable
            (a module-level function or a `functools.partial` of one).
        key: the column that identifies an input.
        chunk_size: inputs per saved part; the most work a kill can lose.
        shard: `(i, n)` or `"i/n"`: this process takes chunks i, i+n, ...
        desc: name for the progress bar and the summary line.
        num_proc: worker processes for `process`.

    Returns:
        The merged dataset, or None when this shard is done but others are still running.
    """
    out_dir = Path(out_dir)
    shard_index, shard_count = parse_shard(shard)
    keys = [row[key] for row in inputs]
    if len(set(keys)) != len(keys):
        seen: set = set()
        duplicates = [k for k in keys if k in seen or seen.add(k)]
        raise ValueError(f"{desc}: duplicate {key} values in the inputs, e.g. {duplicates[:5]}")

    stage_fp = _stage_fingerprint(fingerprint, inputs, chunk_size)
    done = read_json(out_dir / _COMPLETE)
    if done is not None and done.get("fingerprint") == stage_fp:
        logger.info(
            "%s: up to date (%d rows, %d rejects) in %s", desc, done["rows"], done["rejects"], out_dir
        )
        return load_stage(out_dir)

    _prepare_dir(out_dir, stage_fp)
    chunks = _chunks(inputs, chunk_size)
    mine = [(i, c) for i, c in enumerate(chunks) if i % shard_count == shard_index]
    todo = [(i, c) for i, c in mine if not _part_dir(out_dir, i).exists()]
    done_inputs = sum(len(c) for _, c in mine) - sum(len(c) for _, c in todo)
    if done_inputs:
        logger.info("%s: resuming, %d inputs already done", desc, done_inputs)

    start = time.perf_counter()
    with tqdm(total=sum(len(c) for _, c in mine), initial=done_inputs, desc=desc, unit="row") as bar:
        for index, result in _results(process, todo, num_proc):
            _write_part(out_dir, index, result)
            bar.update(len(chunks[index]))

    # One merger: a lock that the OS releases if its holder dies.
    with open(out_dir / "_merge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = read_json(out_dir / _COMPLETE)
        if done is None or done.get("fingerprint") != stage_fp:
            missing = [i for i in range(len(chunks)) if not _part_dir(out_dir, i).exists()]
            if missing:
                logger.info(
                    "%s: shard %d/%d done; %d chunks left to other shards",
                    desc,
                    shard_index,
                    shard_count,
                    len(missing),
                )
                return None
            _merge(out_dir, len(chunks), key, fingerprint, stage_fp, time.perf_counter() - start)
    (out_dir / "_merge.lock").unlink(missing_ok=True)
    stats = stage_stats(out_dir)
    logger.info(
        "%s: %d rows kept, %d rejected, %.1fs -> %s",
        desc,
        stats["rows"],
        stats["rejects"],
        time.perf_counter() - start,
        out_dir,
    )
    _log_reject_reasons(desc, out_dir)
    return load_stage(out_dir)


def _log_reject_reasons(desc: str, out_dir: Path) -> None:
    """Say why inputs were rejected (counted by reason, a few names each) and where every one is listed."""
    by_reason: dict[str, list[str]] = {}
    for reject in read_rejects(out_dir):
        by_reason.setdefault(reject.get("reason", "?"), []).append(str(reject.get("file") or reject.get("clip_id")))
    for reason, names in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        logger.info("%s: %d rejected, %s: %s%s", desc, len(names), reason, ", ".join(names[:3]), more)
    if by_reason:
        logger.info("%s: every reject is listed in %s", desc, out_dir / _REJECTS)
