"""Which failures are the user's to fix, and how the command-line entry points report them: one line
naming the file or key, exit status 2, no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# A disk that is full, read-only or not ours: the message names the path, there is nothing to debug.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from jinja2.exceptions import SecurityError

    from speechllm.audio import AudioError
    from speechllm.config import ConfigError
    from speechllm.corpus.audiofolder import AudioFolderError
    from speechllm.data.described import DescribedDataError
    from speechllm.eval.data import EvalDataError
    from speechllm.model.encoder import LongAudioError
    from speechllm.model.speechlm import CheckpointError
    from speechllm.sources import SourceError

    return (ConfigError, AudioFolderError, AudioError, LongAudioError, SourceError, CheckpointError,
            EvalDataError, DescribedDataError, SecurityError, pickle.UnpicklingError)  # fmt: skip


def one_line(err: BaseException) -> str | None:
    """The one-line report of a user error (`config error: ...` / `error: ...`), or None for a bug."""
    from speechllm.config import ConfigError

    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        where = f" ({err.filename})" if err.filename else ""
        return f"error: cannot write{where}: {err.strerror}"
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(err, MissingMandatoryValue):  # a `???` key left unset, e.g. evaluate.py without checkpoint=
        key = getattr(err, "full_key", None) or str(err).split(":")[-1].strip()
        return f"config error: {key} has no value; set it on the command line ({key}=...)"
    if not isinstance(err, _user_error_types()):
        return None
    if isinstance(err, ConfigError):
        return f"config error: {err}"
    if isinstance(err, pickle.UnpicklingError):
        # torch's own message suggests weights_only=False, which is exactly what must not be done here.
        return "error: a checkpoint file is a pickle that could run code; refused (only safetensors and plain tensor files are read)"
    from jinja2.exceptions import SecurityError

    if isinstance(err, SecurityError):
        return f"error: the chat template tried something unsafe and was stopped: {err}"
    text = " ".join(str(err).split())
    return f"error: {text}"


@contextmanager
def reported() -> Iterator[None]:
    """Run an entry point's work; a user error is printed as one line on stderr and exits with status 2."""
    try:
        yield
    except Exception as err:
        line = one_line(err)
        if line is None:
            raise
        print(line, file=sys.stderr)
        raise SystemExit(2) from None
