"""One output folder for all processes of a distributed run.

Under `torchrun` / `accelerate launch` every rank runs `train.py`, and Hydra would give each rank
its own time-stamped run folder (they start a fraction of a second apart). Before Hydra starts, rank 0
picks the folder and publishes it through the launcher's key-value store; the other ranks read it, and
every rank gets the same `hydra.run.dir=...` override. An explicit `hydra.run.dir` always wins.
"""

from __future__ import annotations

import datetime
import os
import re

import yaml

from speechllm.config import CONF_DIR

TRAIN_YAML = CONF_DIR / "train.yaml"
_KEY = "speechllm/run_dir"


def configured_dir(key: str, now: datetime.datetime | None = None) -> str:
    """The folder conf/train.yaml gives a run (`key="run"`) or a sweep (`"sweep"`), its `${now:...}` filled
    in: the one place the pattern is written is the YAML."""
    pattern = yaml.safe_load(TRAIN_YAML.read_text())["hydra"][key]["dir"]
    now = now or datetime.datetime.now()
    return re.sub(r"\$\{now:([^}]*)\}", lambda m: now.strftime(m.group(1)), pattern)


def world_size() -> int:
    """Processes in this launch (1 outside torchrun/accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def has_override(argv: list[str], key: str) -> bool:
    """Whether the command line sets `key=` (with or without Hydra's `+`/`++` prefixes)."""
    return any(a.lstrip("+").startswith(f"{key}=") for a in argv)


def shared_run_dir_argv(argv: list[str], timeout_s: float = 300.0) -> list[str]:
    """`argv` with `hydra.run.dir=<one folder for all ranks>` added when running distributed.

    Args:
        argv: the command line (`sys.argv`).
        timeout_s: how long non-zero ranks wait for rank 0's folder.

    Returns:
        argv unchanged for a single process or when the folder is given (`hydra.run.dir`, or
        `hydra.sweep.dir` for a multirun `-m`); otherwise argv plus that override.

    Raises:
        RuntimeError: distributed, but not started by torchrun/accelerate (no launcher store), and no
            `hydra.run.dir` given.
    """
    multirun = bool({"-m", "--multirun"} & set(argv))
    key_name = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if world_size() <= 1 or has_override(argv, key_name):
        return argv
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        raise RuntimeError(
            f"distributed run without torchrun's key-value store: pass {key_name}=<folder> explicitly so "
            "all ranks write to one output folder"
        )
    import torch.distributed as dist

    # torchrun's agent hosts a store at MASTER_ADDR:MASTER_PORT that workers join as clients (the same
    # one init_process_group uses later); a key of our own does not disturb it.
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )  # fmt: skip
    key = f"{_KEY}/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    if int(os.environ.get("RANK", "0")) == 0:
        store.set(key, configured_dir("sweep" if multirun else "run"))
    run_dir = store.get(key).decode()
    return [*argv, f"{key_name}={run_dir}"]
