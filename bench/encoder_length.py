"""Encoding a short clip: our length-following Whisper encoder vs the stock 30-s-padded one.

    python bench/encoder_length.py                                   # packaged Whisper tiny.en, 3-s clip
    python bench/encoder_length.py --whisper openai/whisper-small --seconds 5 --repeats 5
    python bench/encoder_length.py --random-base                     # random whisper-base-sized weights

Both paths include the log-mel front end and run every encoder layer on one core:
- stock: `WhisperFeatureExtractor` pads to 30 s, `WhisperEncoder.forward` runs 1500 frames;
- ours: `WhisperFeatureEncoder` computes log-mels for the clip's length and runs the layers on
  seconds * 50 frames (+1), with the positional embedding sliced.
Prints the median seconds of each over `--repeats` runs and the ratio (stock / ours), from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from speechllm.model.encoder import WhisperFeatureEncoder  # noqa: E402


def load(args) -> WhisperFeatureEncoder:
    """The encoder under test: a source, or random weights of whisper-base's size."""
    if args.random_base:
        from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

        torch.manual_seed(0)
        config = WhisperConfig(
            d_model=512,
            encoder_layers=6,
            encoder_attention_heads=8,
            encoder_ffn_dim=2048,
            decoder_layers=1,
            decoder_attention_heads=8,
            decoder_ffn_dim=2048,
        )
        encoder = WhisperForConditionalGeneration(config).model.encoder.eval()
        return WhisperFeatureEncoder(
            encoder, WhisperFeatureExtractor(), num_taps=encoder.config.encoder_layers
        )
    from speechllm.model.encoder import load_encoder

    return load_encoder(args.whisper, num_taps=10**6)  # tap every layer: both paths run all of them


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whisper", default="packaged:whisper-tiny.en", help="a Whisper source")
    parser.add_argument(
        "--random-base", action="store_true", help="random whisper-base-sized weights instead"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    enc = load(args)
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(int(args.seconds * enc.sample_rate))).astype(np.float32)

    @torch.no_grad()
    def stock():
        mel = enc.feature_extractor([clip], sampling_rate=enc.sample_rate, return_tensors="pt").input_features
        return enc.encoder(mel).last_hidden_state

    @torch.no_grad()
    def ours():
        mel = enc.mels([clip])
        return enc(mel.input_features, mel.window_frames, mel.windows_per_clip).features

    name = "random whisper-base size" if args.random_base else args.whisper
    frames = enc.num_frames(len(clip))
    t_stock = timed(stock, args.repeats)
    t_ours = timed(ours, args.repeats)
    print(
        f"encoder: {name} ({enc.encoder.config.encoder_layers} layers, d_model {enc.hidden_size}), 1 thread"
    )
    print(f"clip: {args.seconds:g} s -> ours {frames} frames vs stock {enc.max_frames} frames")
    print(f"stock 30-s padded: {t_stock * 1000:8.1f} ms  (median of {args.repeats})")
    print(f"ours (clip length): {t_ours * 1000:8.1f} ms")
    print(f"speed-up: {t_stock / t_ours:.1f}x")


if __name__ == "__main__":
    main()
