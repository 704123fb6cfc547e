"""Ask a trained SpeechLM about audio files.

Usage:
    python -m speechllm.ask CHECKPOINT AUDIO "question"
    python -m speechllm.ask CHECKPOINT a.wav b.wav -q "Who is speaking?" -q "How fast do they speak?"

Without -q the last positional argument is the question. Every question is asked about every file.
With one file and one question only the answer is printed; otherwise each answer follows a
`== file: question` header. Bad audio (missing, unreadable, empty, silent, NaN) stops with a one-line
error before the model is loaded; other sample rates and stereo are converted (noted on stderr).
"""

from __future__ import annotations

import argparse
import sys

from speechllm.audio import SAMPLE_RATE, load_audio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m speechllm.ask", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a folder written by SpeechLM.save_pretrained")
    parser.add_argument("inputs", nargs="+", help="audio files, then the question unless -q is given")
    parser.add_argument("-q", "--question", action="append", default=[], help="a question (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--no-transcript", action="store_true", help="do not add the Whisper transcript")
    args = parser.parse_args(argv)
    if not args.question:
        if len(args.inputs) < 2:
            parser.error("give at least one audio file and a question (positional or -q)")
        args.question = [args.inputs.pop()]
    args.audio = args.inputs
    if any(not q.strip() for q in args.question):
        parser.error("a question is empty")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.device is not None:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    return args


def ask(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Load the audio and the model and answer every question about every file.

    Args:
        args: from `parse_args`.

    Returns:
        (audio path, question, answer) triples, file-major.
    """
    import torch

    from speechllm.model import SpeechLM

    clips = []
    for path in args.audio:
        clip = load_audio(path, sr=SAMPLE_RATE)
        for conversion in clip.conversions:
            print(f"note: {path}: {conversion}", file=sys.stderr)
        clips.append(clip.array)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {"prompt": {"transcript": False}} if args.no_transcript else {}
    model = SpeechLM.from_pretrained(args.checkpoint, **overrides).to(device)
    transcripts = model.transcribe(clips) if model.prompt.transcript else [None] * len(clips)
    rows, keys = [], []
    for path, array, transcript in zip(args.audio, clips, transcripts, strict=True):
        for question in args.question:
            rows.append({"audio": array, "clip_id": path, "transcript": transcript, "instruction": question})
            keys.append((path, question))
    answers = model.generate(rows, max_new_tokens=args.max_new_tokens)
    return [(p, q, a) for (p, q), a in zip(keys, answers, strict=True)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from speechllm.errors import one_line

    try:
        results = ask(args)
    except Exception as err:
        line = one_line(err)  # a bad file, checkpoint or source: one line; anything else is a bug
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    for path, question, answer in results:
        if not answer.strip():  # an empty line alone would read as a crash
            print(f"note: {path}: {question!r}: the model ended its answer at once (an empty answer)", file=sys.stderr)
    if len(results) == 1:
        print(results[0][2])
    else:
        for path, question, answer in results:
            print(f"== {path}: {question}\n{answer}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
