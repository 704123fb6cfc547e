"""Packaged model load time: cold (convert from the wheel into an empty cache, then load) vs cached.

    python bench/model_load.py                                  # both packaged models
    python bench/model_load.py --models whisper-tiny.en --repeats 3

For each packaged model, in one run and one process (imports done beforehand, so neither side pays
them):
- cold: `load_llm`/`load_whisper` with an empty temporary `$SPEECHLLM_CACHE` (wheel -> conversion ->
  atomic write -> checksum -> `from_pretrained`);
- cached: the same call again, with this process's record of verified folders cleared, so it pays what
  a fresh process pays (checksum verification of the cache folder + `from_pretrained`); the best of
  `--repeats` runs.
Prints both times and the ratio cold / cached.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402, F401  (imported up front: import time is not load time)

from speechllm.packaged import PACKAGED, cache  # noqa: E402
from speechllm.sources import load_llm, load_whisper  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, repeats: int) -> tuple[float, float]:
    """Time the cold and the cached load of one packaged model.

    Args:
        name: packaged model name (a key of ``speechllm.packaged.PACKAGED``).
        repeats: cached loads to run (the fastest is reported).

    Returns:
        ``(cold_seconds, cached_seconds)``.
    """
    load = load_llm if PACKAGED[name].kind == "llm" else load_whisper
    source = f"packaged:{name}"
    previous = os.environ.get("SPEECHLLM_CACHE")
    with tempfile.TemporaryDirectory(prefix="speechllm-bench-") as root:
        os.environ["SPEECHLLM_CACHE"] = root
        try:
            cold = _timed(lambda: load(source))
            cached = []
            for _ in range(repeats):
                # A fresh process has verified nothing and hashed no wheel yet.
                cache._verified.clear()
                cache._source_hashes.clear()
                cached.append(_timed(lambda: load(source)))
        finally:
            if previous is None:
                os.environ.pop("SPEECHLLM_CACHE", None)
            else:
                os.environ["SPEECHLLM_CACHE"] = previous
    return cold, min(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PACKAGED), choices=list(PACKAGED))
    parser.add_argument("--repeats", type=int, default=2, help="cached loads per model (best is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':<24} {'cold (convert+load) s':>22} {'cached load s':>14} {'cold/cached':>12}")
    for name in args.models:
        cold, cached = bench(name, args.repeats)
        print(f"{name:<24} {cold:>22.2f} {cached:>14.2f} {cold / cached:>11.1f}x", flush=True)


if __name__ == "__main__":
    main()
