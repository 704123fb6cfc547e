"""One set of data-preparation settings at a time per data folder.

Two `prepare.py` runs on one `paths.data_dir` with different settings would write the same stage folders
(and the shared `replay/`) at once: one crashes, exits with no dataset, or silently replaces the other's
finished output. Runs with the same settings are welcome side by side: that is how `shard=i/n` splits a
stage over processes. So each run registers its settings' digest and process id in
`<data_dir>/.prepare-holders.json` (read and written under an exclusive `flock`), and a run whose
settings differ from a live holder's is refused, naming it. A holder that died without leaving (killed)
is dropped when its process is gone; one on another host is kept until the file is removed by hand.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from speechllm.config import ConfigError

HOLDERS = ".prepare-holders.json"


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    with open(folder / ".prepare.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _same_process(holder: dict, me: dict) -> bool:
    return holder["pid"] == me["pid"] and holder.get("host") == me["host"]


def _read(path: Path) -> list[dict]:
    try:
        holders = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [h for h in holders if isinstance(h, dict) and "pid" in h] if isinstance(holders, list) else []


@contextmanager
def preparing(data_dir: str | os.PathLike, settings_digest: str) -> Iterator[None]:
    """Hold `data_dir` for a prepare run with these settings, for the length of the `with` block.

    Args:
        data_dir: `paths.data_dir` (created if missing).
        settings_digest: a digest of the settings that decide what the stages write (not `shard`,
            `num_proc` or `stages`, which runs of one configuration may differ in).

    Raises:
        ConfigError: a live run with other settings holds the folder; names its process, host and command.
    """
    folder = Path(data_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"paths.data_dir={folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HOLDERS
    me = {"pid": os.getpid(), "host": socket.gethostname(), "settings": settings_digest,
          "command": " ".join(sys.argv)}  # fmt: skip
    with _exclusive(folder):
        holders = [h for h in _read(path) if _alive(h) and not _same_process(h, me)]
        others = [h for h in holders if h.get("settings") != settings_digest]
        if others:
            named = "; ".join(f"pid {h['pid']} on {h.get('host')}: {h.get('command', '?')}" for h in others)
            raise ConfigError(
                f"{folder} is being prepared with other settings by {named}. Wait for it to finish, or "
                f"use another paths.data_dir (if that process is gone, delete {path})"
            )
        path.write_text(json.dumps([*holders, me], indent=1))
    try:
        yield
    finally:
        with _exclusive(folder):
            path.write_text(json.dumps([h for h in _read(path) if not _same_process(h, me)], indent=1))
