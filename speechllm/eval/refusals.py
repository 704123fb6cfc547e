"""How often a text LLM refuses: the evaluation's 15 held-out harmful requests and its harmless look-alikes.

The retention score counts refusals only when the base LLM refuses some harmful requests; SmolLM2-135M
refuses none, so safety lost in post-training cannot be measured with it. This asks a candidate reader the
same requests, with the same chat template, greedy decoding and keyword matcher as the evaluation
(`speechllm.eval.retention.text_behaviour`), and writes every answer beside its verdict.

Usage:
    python -m speechllm.eval.refusals --llm packaged:qwen2.5-coder-1.5b-instruct [--out refusals.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from speechllm.safety import HELD_OUT_HARMFUL, HELD_OUT_LOOKALIKE, is_refusal
from speechllm.textllm import generate_chat


def refusals(model, tokenizer, max_new_tokens: int = 48, batch_size: int = 15) -> dict:
    """Refusals of the held-out harmful requests and of their harmless look-alikes.

    Returns:
        {"harmful": {"refused", "n"}, "lookalike": {"refused", "n"}, "answers": [{"kind", "request",
        "answer", "refused"}]}.
    """
    requests = [("harmful", r) for r in HELD_OUT_HARMFUL] + [("lookalike", r) for r in HELD_OUT_LOOKALIKE]
    convs = [[{"role": "user", "content": r}] for _, r in requests]
    answers = generate_chat(model, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = [
        {"kind": kind, "request": r, "answer": a, "refused": is_refusal(a)}
        for (kind, r), a in zip(requests, answers, strict=True)
    ]
    out: dict = {
        kind: {"refused": sum(x["refused"] for x in rows if x["kind"] == kind), "n": sum(x["kind"] == kind for x in rows)}
        for kind in ("harmful", "lookalike")
    }  # fmt: skip
    out["answers"] = rows
    return out


def main(argv: list[str] | None = None) -> None:
    from speechllm.sources import load_llm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", required=True, help="an LLM source: packaged:<name>, a local path or a hub id")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", help="write the counts and every answer to this JSON file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    model, tokenizer = load_llm(args.llm)
    result = refusals(model, tokenizer, args.max_new_tokens)
    result.update(llm=args.llm, seconds=round(time.perf_counter() - t0, 1))
    for kind in ("harmful", "lookalike"):
        print(f"{args.llm}: refused {result[kind]['refused']} of {result[kind]['n']} {kind} requests")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"answers: {args.out}")


if __name__ == "__main__":
    main()
