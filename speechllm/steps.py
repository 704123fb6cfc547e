"""Pipeline steps run as the commands a user would type: printed, streamed, logged, and skipped when
finished by the same command and sources. `make demo` (`speechllm.demo`) and `make study`
(`speechllm.study`) both run their steps through here.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def newest_mtime(folder: Path, pattern: str) -> float:
    times = [p.stat().st_mtime for p in folder.glob(pattern)]
    return max(times) if times else 0.0


def run_step(name: str, argv: list[str], log_dir: Path) -> float:
    """Run one step, streaming its output and keeping a log; returns its wall time in seconds."""
    print(f"\n=== {name}: {shlex.join(argv)}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"step '{name}' failed (exit {code}); its log is {log_dir / f'{name}.log'}")
    print(f"=== {name}: done in {seconds:.0f}s", flush=True)
    return seconds


def sources_digest(skip: tuple[str, ...] = ()) -> str:
    """A hash of the code and configs a step runs (Python files and YAML under the repository), so an
    edited preset or a fixed bug makes the demo redo the step instead of reusing its old output.

    Args:
        skip: path prefixes, relative to the repository, that cannot change the step's output.
    """
    digest = hashlib.sha256()
    files = [*REPO.glob("speechllm/conf/**/*.yaml"), *REPO.glob("speechllm/**/*.py"), *REPO.glob("data_prep/*.py"),
             REPO / "train.py", REPO / "evaluate.py"]  # fmt: skip
    for path in sorted(files):
        rel = path.relative_to(REPO).as_posix()
        if not rel.startswith(skip):
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def is_fresh(marker: Path, inputs_mtime: float, record: dict) -> bool:
    """A step's output is reusable when it exists, is newer than its inputs, and came from the same
    command and sources (`record`, as written to demo_command.json beside it by :func:`run_recorded`)."""
    if not marker.exists() or marker.stat().st_mtime < inputs_mtime:
        return False
    recorded = marker.parent / "demo_command.json"
    return recorded.exists() and json.loads(recorded.read_text()) == record


def run_recorded(name: str, argv: list[str], log_dir: Path, record_path: Path, record: dict) -> float:
    record_path.unlink(missing_ok=True)  # a failed rerun must not leave the old record vouching for it
    seconds = run_step(name, argv, log_dir)
    record_path.write_text(json.dumps(record))
    return seconds


def prepare_command_for(data_dir: str, overrides: list[str]) -> list[str]:
    """The `data_prep/prepare.py` command that makes the data `train.py experiment=demo` reads, with
    the preset's target settings (instruction pool, verification, generation) and the user's overrides:
    the one training would print if the data were missing."""
    from hydra import compose, initialize_config_dir

    from speechllm.config import CONF_DIR
    from speechllm.data.prepared import prepare_command
    from speechllm.train.config import validate_schema

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=demo", f"paths.data_dir={data_dir}", *overrides],
            return_hydra_config=True,
        )
    _, _, mixture = validate_schema(cfg)
    command = prepare_command(cfg, list(mixture.sources()))
    # Outside a Hydra app the user's overrides of the shared groups are not seen by prepare_command; a key
    # added (+, ++) or deleted (~) belongs to its group too.
    return command + [
        o for o in overrides if o.lstrip("~+").split(".")[0] in ("data", "target", "replay") and o not in command
    ]
