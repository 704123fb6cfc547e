"""Evaluate a trained speech-language model: unseen speech instructions, the text-LLM ceiling, the
untrained baseline and retention of the LLM's abilities. Writes report.json, report.md, plots and
answers.jsonl (every answer and what it parsed to).

Usage:
    python evaluate.py checkpoint=DIR                       # the demo corpus's described test split
    python evaluate.py checkpoint=DIR eval.data=NAME        # {paths.data_dir}/NAME/described, split test
    python evaluate.py checkpoint=DIR eval.audiofolder=DIR  # any labelled audiofolder (metadata.csv)
    python evaluate.py -m checkpoint=A,B,C                  # several checkpoints, one report each
    python -m speechllm.eval.plane RUN_DIR [RUN_DIR ...]    # learning-vs-forgetting plane across reports

The logic lives in speechllm.eval.runner.evaluate.
"""

from speechllm.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
