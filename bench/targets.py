"""The demo's targets stage, decoded three ways, on the demo's own described clips.

The targets stage asks the frozen LLM three questions about each clip's description; the three prompts
share the system turn and the description, most of their tokens. Every run below is the stage's own
writer (`speechllm.data.targets.TargetWriter`, greedy answers, verification and the paraphrase
fallback, the demo's settings from `experiment=demo`) over the same clips with the same loaded model:
1. before: every prompt run whole through `transformers`' `generate`, in batches of 16;
2. shared prefixes: each clip's common prefix run once and its KV cache copied to its questions, then
   `generate`, in batches of 48;
3. ours (`speechllm.textllm.generate_texts`): the stem every prompt shares run once per prefill pass,
   each clip's prefix once, and greedy decoding that drops finished rows from the batch, in batches of
   the demo's size.

Usage (after `make demo` has described the corpus):
    python bench/targets.py                     # 64 clips (192 answers, one of the stage's parts)
    python bench/targets.py --clips 160
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import speechllm.data.targets as targets  # noqa: E402
from speechllm.config import CONF_DIR  # noqa: E402
from speechllm.data.layout import described_dir  # noqa: E402
from speechllm.data.stage import load_stage  # noqa: E402
from speechllm.data.verify import label_classes  # noqa: E402
from speechllm.sources import load_llm  # noqa: E402
from speechllm.steps import prepare_command_for  # noqa: E402


def demo_target_config(data_dir: str, clips: int) -> tuple[targets.TargetConfig, int]:
    """The target settings `make demo` prepares with, limited to the first `clips` clips."""
    command = prepare_command_for(data_dir, [])
    overrides = [a for a in command if "=" in a and not a.startswith(("target.limit=", "paths.data_dir="))]
    overrides += [f"target.limit={clips}", f"paths.data_dir={data_dir}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=overrides)
    return targets.target_config(cfg.target), int(cfg.get("seed", 0))


def run_writer(writer: targets.TargetWriter, inputs: list[dict], chunk_size: int) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    rows = []
    for k in range(0, len(inputs), chunk_size):
        rows.extend(writer(inputs[k : k + chunk_size]).rows)
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data", help="paths.data_dir of the demo")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--before-batch-size", type=int, default=16, help="the earliest default")
    parser.add_argument("--shared-batch-size", type=int, default=48, help="the default of the shared way")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg, seed = demo_target_config(str(Path(args.data_dir).resolve()), args.clips)
    described = load_stage(described_dir(args.data_dir, "demo"))
    inputs = targets._described_inputs(described, cfg, seed)
    classes = label_classes([dict(r) for r in described])
    model, tokenizer = load_llm(cfg.llm)
    model.eval()

    def writer(batch_size: int) -> targets.TargetWriter:
        settings = dataclasses.replace(
            cfg, generation=dataclasses.replace(cfg.generation, batch_size=batch_size)
        )
        return targets.TargetWriter(settings, seed=seed, model=model, tokenizer=tokenizer, classes=classes)

    writer(4)(inputs[:3])  # warm-up: one-off allocation and kernel choice
    ours = targets.generate_texts
    targets.generate_texts = functools.partial(ours, share_prefix=False, hf_generate=True)
    runs = {
        f"whole, generate, {args.before_batch_size}": run_writer(
            writer(args.before_batch_size), inputs, cfg.chunk_size
        )
    }
    targets.generate_texts = functools.partial(ours, hf_generate=True)
    runs[f"shared, generate, {args.shared_batch_size}"] = run_writer(
        writer(args.shared_batch_size), inputs, cfg.chunk_size
    )
    targets.generate_texts = ours
    runs[f"ours, {cfg.generation.batch_size}"] = run_writer(
        writer(cfg.generation.batch_size), inputs, cfg.chunk_size
    )
    (t_before, before), *_ = runs.values()
    by_id = {r["target_id"]: r["target"] for r in before}
    print(f"{cfg.llm}, threads {torch.get_num_threads()}, {args.clips} clips x {cfg.instructions_per_clip} "
          f"questions = {len(inputs)} inputs, chunks of {cfg.chunk_size}")  # fmt: skip
    print(f"{'decoding, batch':<26}{'seconds':>10}{'speed-up':>10}{'kept':>7}{'identical':>11}")
    for name, (seconds, rows) in runs.items():
        same = sum(by_id.get(r["target_id"]) == r["target"] for r in rows)
        print(f"{name:<26}{seconds:>10.1f}{t_before / seconds:>9.2f}x{len(rows):>7d}{same:>7d}/{len(before)}")


if __name__ == "__main__":
    main()
