"""Describe-stage throughput: signal attributes' real-time factor, batched vs one-at-a-time Whisper ASR.

    python bench/describe.py                     # 48 espeak clips, packaged whisper tiny.en
    python bench/describe.py --clips 96 --asr-clips 32 --whisper packaged:whisper-tiny.en

Prints, from one run:
- real-time factor of the signal attributes (duration, pitch, gender by pitch, volume, speaking rate,
  SNR): audio seconds described per wall second on one core (torch and BLAS limited to one thread);
- Whisper ASR clips per second and WER, one clip per `generate` call vs `batch_size` clips, each on
  Whisper's 30-s input and trimmed to the audio (`transcript.trim`), with transformers (`hf`) and
  CTranslate2 (`ct2`, `transcript.backend`), and the ratio of ours (ct2, batched, trimmed) to the plain
  way (transformers, one clip at a time, 30 s).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # "per core": one thread everywhere

import yaml  # noqa: E402

from speechllm.audio import load_audio  # noqa: E402
from speechllm.corpus import generate_corpus, read_audiofolder  # noqa: E402
from speechllm.describe import Clip, describe_clips, load_configs  # noqa: E402
from speechllm.describe.registry import ATTRIBUTES_DIR  # noqa: E402
from speechllm.describe.transcript import transcribe  # noqa: E402
from speechllm.parsing import word_error_rate  # noqa: E402

SIGNAL = ["duration", "gender", "pitch", "volume", "speaking_rate", "snr"]


def _clips(rows: list[dict]) -> list[Clip]:
    out = []
    for r in rows:
        audio = load_audio(r["audio_path"])
        out.append(Clip(r["clip_id"], audio.array, audio.sr, labels={"text": r["label_text"]}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=48, help="clips for the signal attributes")
    parser.add_argument("--asr-clips", type=int, default=16, help="clips for the ASR comparison")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--whisper", default="packaged:whisper-tiny.en")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    demo = yaml.safe_load((ATTRIBUTES_DIR.parent / "data" / "demo.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        demo["size"] = max(args.clips, args.asr_clips)
        rows = read_audiofolder(generate_corpus(os.path.join(tmp, "corpus"), demo, num_proc=2))
        clips = _clips(rows[: args.clips])
        asr_arrays = [c.audio for c in _clips(rows[: args.asr_clips])]
        asr_texts = [r["label_text"] for r in rows[: args.asr_clips]]

    # Signal attributes; transcript from the label so only signal work is timed. A warm-up clip first
    # (librosa's YIN is JIT-compiled on first use).
    configs, order = load_configs(
        SIGNAL, overrides={"transcript": {"methods": ["label"]}, "gender": {"methods": ["pitch"]}}
    )
    warm = clips[0]
    describe_clips(
        [Clip("warm-up", warm.audio, warm.sr, labels=warm.labels)], SIGNAL, configs, order, "natural"
    )
    audio_seconds = sum(c.duration for c in clips)
    start = time.perf_counter()
    describe_clips(clips, SIGNAL, configs, order, "natural")
    signal_wall = time.perf_counter() - start

    for backend in ("hf", "ct2"):  # load + warm up
        transcribe(asr_arrays[:1], args.whisper, batch_size=1, backend=backend)
    plain, single_trimmed = "hf, one at a time, 30 s (the plain way)", "hf, one at a time, trimmed"
    batched, hf_batched = f"hf, batch of {args.batch_size}, 30 s", f"hf, batch of {args.batch_size}, trimmed"
    ours = f"ct2, batch of {args.batch_size}, trimmed (ours, the default)"
    runs = {  # name -> (batch size, trim, backend)
        plain: (1, False, "hf"),
        single_trimmed: (1, True, "hf"),
        batched: (args.batch_size, False, "hf"),
        hf_batched: (args.batch_size, True, "hf"),
        ours: (args.batch_size, True, "ct2"),
    }
    seconds, wers, texts = {}, {}, {}
    for name, (batch_size, trim, backend) in runs.items():
        start = time.perf_counter()
        texts[name] = transcribe(asr_arrays, args.whisper, batch_size=batch_size, trim=trim, backend=backend)
        seconds[name] = time.perf_counter() - start
        wers[name] = word_error_rate(asr_texts, texts[name])

    print(
        f"signal attributes {SIGNAL}: {len(clips)} clips, {audio_seconds:.1f} s of audio in {signal_wall:.2f} s"
    )
    print(f"  real-time factor (audio s per wall s, 1 core): {audio_seconds / signal_wall:.0f}x")
    print(f"whisper ASR ({args.whisper}), {len(asr_arrays)} clips, 1 thread:")
    for name in runs:
        print(f"  {name:58s} {len(asr_arrays) / seconds[name]:6.2f} clips/s   WER {wers[name]:.3f}")
    print(f"  ours / one-at-a-time throughput: {seconds[plain] / seconds[ours]:.2f}x")
    print(
        f"  batching alone: {seconds[single_trimmed] / seconds[hf_batched]:.2f}x trimmed, "
        f"{seconds[plain] / seconds[batched]:.2f}x on 30 s"
    )
    same = sum(a == b for a, b in zip(texts[ours], texts[hf_batched], strict=True))
    print(
        f"  ct2 / hf, both batched and trimmed: {seconds[hf_batched] / seconds[ours]:.2f}x, "
        f"{same} of {len(asr_arrays)} transcripts identical"
    )


if __name__ == "__main__":
    main()
