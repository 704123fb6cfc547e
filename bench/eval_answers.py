"""The evaluation's speech answers with and without shared clip prompts, on the demo's held-out clips.

The demo's evaluation asks every held-out clip 18 questions (6 tasks x 3 phrasings). Asked the way
before prefix sharing, each question is its own row: the clip's audio goes through Whisper and the
adapter, and the system turn, audio slots and transcript through the LLM, once per question, in
task-major batches. Ours (`speechllm.eval.runner.speech_answers`) batches a clip's questions together,
encodes the audio once per clip and runs the shared prompt once, copying its KV cache to each question
(`SpeechLM.generate`). Both run the same model on the same questions; the answers are compared.

Usage (after `make demo`):
    python bench/eval_answers.py --checkpoint runs/demo/train/checkpoints/final    # 8 clips, 144 answers
    python bench/eval_answers.py --clips 16                  # the untrained model of experiment=demo
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from tqdm import tqdm  # noqa: E402

from speechllm.config import CONF_DIR  # noqa: E402
from speechllm.data.described import described_rows  # noqa: E402
from speechllm.eval.answers import speech_answers  # noqa: E402
from speechllm.eval.tasks import build_items, select_tasks  # noqa: E402
from speechllm.model.speechlm import SpeechLM  # noqa: E402


def one_row_per_question(model, rows, items, max_new_tokens: int, batch_size: int) -> list[str]:
    """The way before: questions in task-major order, every row with its own audio and prompt."""
    reqs = [
        {"audio_path": rows[it.row]["audio_path"], "transcript": rows[it.row].get("transcript"),
         "instruction": it.question}
        for it in items
    ]  # fmt: skip
    out = []
    for start in tqdm(range(0, len(reqs), batch_size), desc="one row per question", unit="batch"):
        out += model.generate(reqs[start : start + batch_size], max_new_tokens, share_prefix=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data", help="paths.data_dir of the demo")
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: untrained model)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--questions-per-task", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.checkpoint:
        model = SpeechLM.from_pretrained(args.checkpoint)
        if model.finetune == "lora":
            model.llm.merge_adapter()  # as the evaluation does
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=["experiment=demo"])
        torch.manual_seed(0)
        model = SpeechLM.from_config(cfg.model).eval()
    rows = described_rows(args.data_dir, "demo", split="test", max_clips=args.clips)
    tasks, _ = select_tasks(sorted({k for r in rows for k in r}), None)
    items, _ = build_items(rows, tasks, args.questions_per_task)
    one_row_per_question(model, rows, items[:4], 4, 4)  # warm-up: one-off allocation and kernel choice

    start = time.perf_counter()
    before = one_row_per_question(model, rows, items, args.max_new_tokens, args.batch_size)
    t_before = time.perf_counter() - start
    start = time.perf_counter()
    ours = speech_answers(model, rows, items, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    t_ours = time.perf_counter() - start

    same = sum(a == b for a, b in zip(before, ours, strict=True))
    print(f"{args.checkpoint or 'untrained experiment=demo'}, threads {torch.get_num_threads()}, "
          f"{len(rows)} clips x {len(tasks)} tasks x {args.questions_per_task} = {len(items)} answers, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}")  # fmt: skip
    print(f"{'way':<28}{'seconds':>10}{'answers/s':>12}")
    print(f"{'one row per question':<28}{t_before:>10.1f}{len(items) / t_before:>12.2f}")
    print(f"{'shared clip prompts':<28}{t_ours:>10.1f}{len(items) / t_ours:>12.2f}")
    print(f"speed-up: {t_before / t_ours:.2f}x; identical answers: {same}/{len(items)}")


if __name__ == "__main__":
    main()
