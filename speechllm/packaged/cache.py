"""Convert-once cache for packaged models: atomic writes, checksummed, rebuilt when damaged.

Layout under the cache root (``$SPEECHLLM_CACHE``, default ``~/.cache/speechllm``)::

    <name>/                    a plain from_pretrained folder
    <name>/speechllm-cache.json   marker: format version, the wheel files it came from (size, sha256),
                                  and size + sha256 of every file in the folder; written last
    <name>.lock                serialises conversions between processes

A folder is used only if its marker exists, matches the current converter version and source files,
and every listed file has the recorded size and checksum. Anything else (an interrupted conversion, a
truncated or edited weight file, a reinstalled wheel) is logged as a warning and rebuilt. A conversion
is written into a temporary sibling folder and renamed into place, so a killed process never leaves a
folder that looks complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "speechllm-cache.json"
# Bump when a converter's output changes, so old cache folders are rebuilt rather than trusted.
CACHE_FORMAT_VERSION = 2

# Folders already verified by this process, keyed by their files' (name, size, mtime); hashing a
# 500 MB weight file costs about a second, so it is done once per process, not on every load.
_verified: set[tuple] = set()


def cache_root() -> Path:
    """Return the cache root: ``$SPEECHLLM_CACHE`` if set, else ``~/.cache/speechllm``."""
    env = os.environ.get("SPEECHLLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "speechllm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# Wheel-file hashes already computed by this process, keyed by (path, size, mtime).
_source_hashes: dict[tuple, str] = {}


def content_key(sources: list[Path]) -> str:
    """A short digest of files' contents (names, sizes, sha256): one cache folder per distinct model."""
    return hashlib.sha256(json.dumps(_source_stamp(sources)).encode()).hexdigest()[:16]


def _source_stamp(sources: list[Path]) -> list[dict]:
    # By content, not path or mtime: every virtual environment (a CI clone, a second checkout) installs
    # the same wheel at another path with new mtimes, and must reuse the same conversion.
    stamps = []
    for p in sources:
        stat = p.stat()
        key = (str(p), stat.st_size, stat.st_mtime_ns)
        if key not in _source_hashes:
            _source_hashes[key] = _sha256(p)
        stamps.append({"name": p.name, "size": stat.st_size, "sha256": _source_hashes[key]})
    return stamps


def _fingerprint(folder: Path) -> tuple:
    return tuple(
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    )


def check_folder(folder: Path, sources: list[Path]) -> str | None:
    """Check a cache folder against its marker.

    Args:
        folder: the cached model folder.
        sources: the wheel files it must have been converted from.

    Returns:
        None when the folder is complete and intact, else the reason it is not.
    """
    marker_path = folder / MARKER
    if not folder.is_dir():
        return "not converted yet"
    try:
        marker = json.loads(marker_path.read_text())
    except FileNotFoundError:
        return f"no {MARKER} (an interrupted or foreign conversion)"
    except (OSError, ValueError) as e:
        return f"unreadable {MARKER}: {e}"
    if not isinstance(marker, dict) or marker.get("format_version") != CACHE_FORMAT_VERSION:
        return "written by another converter version"
    if marker.get("sources") != _source_stamp(sources):
        return "the packaged wheel changed since the conversion"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MARKER} lists no files"
    fingerprint = (str(folder), _fingerprint(folder))
    if fingerprint in _verified:
        return None
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != meta.get("size"):
            return f"{name} has {path.stat().st_size} bytes, expected {meta.get('size')}"
    for name, meta in files.items():
        if _sha256(folder / name) != meta.get("sha256"):
            return f"{name} does not match its checksum"
    _verified.add(fingerprint)
    return None


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_converted(
    name: str, sources: list[Path], convert: Callable[[Path], None], root: Path | None = None
) -> Path:
    """Return the cache folder for ``name``, converting into it first when needed.

    Args:
        name: folder name under the cache root (the packaged model's name).
        sources: wheel files the conversion reads (their size and sha256 are recorded in the marker).
        convert: writes the converted model into the (empty, existing) folder it is given.
        root: cache root; defaults to ``cache_root()``.

    Returns:
        The folder, complete and verified.
    """
    root = root or cache_root()
    folder = root / name
    reason = check_folder(folder, sources)
    if reason is None:
        return folder
    with _lock(root / f"{name}.lock"):
        # Another process may have finished the conversion while this one waited for the lock.
        reason = check_folder(folder, sources)
        if reason is None:
            return folder
        if folder.exists():
            log.warning("cached %s at %s is not usable (%s); rebuilding it", name, folder, reason)
        # Leftovers of a converter killed outright (SIGKILL, power loss) that its cleanup never reached;
        # holding the lock, no live converter owns them.
        for stale in [*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")]:
            log.info("removing %s, left by an interrupted conversion", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            start = time.perf_counter()
            convert(tmp)
            files = {
                p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(tmp.iterdir())
                if p.is_file()
            }
            marker = {"format_version": CACHE_FORMAT_VERSION, "name": name, "sources": _source_stamp(sources),
                      "files": files}  # fmt: skip
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))
            tmp.chmod(0o755)
            if folder.exists():
                # Move the damaged folder aside first: rename is atomic, rmtree is not.
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
                os.replace(folder, trash / name)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("converted %s into %s in %.1f s", name, folder, time.perf_counter() - start)
    return folder
