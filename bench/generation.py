"""Target generation throughput: batched (left-padded, length-sorted) vs one prompt at a time.

Both runs generate greedy answers for the same description prompts with the same model, the way the
targets stage does (`speechllm.textllm.generate_texts`); throughput counts only the answer
tokens actually produced (up to each answer's end-of-turn), so padding and finished rows in a batch
are not counted as work done.

Usage:
    python bench/generation.py                          # packaged SmolLM2-135M, 32 prompts, batch 16
    python bench/generation.py --prompts 64 --batch-size 32 --max-new-tokens 48 --threads 2
    python bench/generation.py --source /path/to/llm --device cuda
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from speechllm.data.instructions import INSTRUCTION_POOLS  # noqa: E402
from speechllm.sources import load_llm  # noqa: E402
from speechllm.textllm import GenerationConfig, chat_prompt, description_messages, generate_texts  # noqa: E402

WHO = ["A British woman", "An American man", "A Scottish man", "A Caribbean woman"]
HOW = ["quickly and quietly", "slowly and loudly", "at a normal pace and volume", "quickly and loudly"]
SAID = [
    "Turn the lights off.",
    "The meeting starts at nine o'clock tomorrow morning.",
    "Please close the window.",
    "Could you send me the report before lunch, and copy my manager?",
    "It is raining again.",
    "We should leave early to avoid the traffic on the bridge.",
]


def bench_prompts(tokenizer, n: int) -> list[str]:
    """n description prompts of varied length, as the targets stage builds them."""
    pool = INSTRUCTION_POOLS["desta25"]
    prompts = []
    for i in range(n):
        description = (
            f"{WHO[i % len(WHO)]} with a {['low', 'normal', 'high'][i % 3]}-pitched voice says, "
            f'{HOW[i % len(HOW)]}, "{SAID[i % len(SAID)]}" The recording is clean and lasts {2 + i % 5} seconds.'
        )
        prompts.append(chat_prompt(tokenizer, description_messages(description, pool[i % len(pool)])))
    return prompts


def timed(model, tokenizer, prompts: list[str], gen: GenerationConfig) -> tuple[float, int, list[str]]:
    """(seconds, answer tokens, texts) for one generation pass."""
    start = time.perf_counter()
    out = generate_texts(model, tokenizer, prompts, gen)
    return time.perf_counter() - start, sum(g.num_tokens for g in out), [g.text for g in out]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_llm(args.source)
    model.to(args.device).eval()
    prompts = bench_prompts(tokenizer, args.prompts)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    # Warm-up: first calls pay one-off allocation and kernel selection costs.
    generate_texts(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2))

    t_single, n_single, single = timed(
        model, tokenizer, prompts, GenerationConfig(**{**gen.__dict__, "batch_size": 1})
    )
    t_batch, n_batch, batched = timed(model, tokenizer, prompts, gen)
    same = sum(a == b for a, b in zip(single, batched, strict=True))

    print(f"model {args.source} on {args.device}, threads {torch.get_num_threads()}, {len(prompts)} prompts, "
          f"greedy, max_new_tokens {args.max_new_tokens}")  # fmt: skip
    print(f"{'mode':<24}{'seconds':>10}{'tokens':>10}{'tokens/s':>12}")
    print(f"{'one at a time':<24}{t_single:>10.2f}{n_single:>10d}{n_single / t_single:>12.1f}")
    print(f"{f'batched ({args.batch_size})':<24}{t_batch:>10.2f}{n_batch:>10d}{n_batch / t_batch:>12.1f}")
    print(f"speed-up (tokens/s, batched / one at a time): {(n_batch / t_batch) / (n_single / t_single):.2f}x")
    print(f"identical answers: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
