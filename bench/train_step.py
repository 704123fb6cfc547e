"""Training-step cost: our Trainer step vs a bare LLM forward+backward, padding, and the feature cache.

One run prints three ratios, measured on the packaged Whisper tiny.en -> Q-Former -> SmolLM2-135M
(frozen) with label targets on a small espeak corpus (prepared on first use into --data-dir):

1. **Step overhead**: wall time of our training steps (data loading, collation, adapter, LLM forward
   and backward, optimiser, logging: everything between two `on_step_end`s) over the time of a bare
   `llm(inputs_embeds=..., labels=...)` forward+backward on the very same batch shapes (recorded by a
   hook on the LLM's decoder during our run). The bare call runs the LM head on every position, as
   `transformers` does; ours runs it only where a label is predicted.
2. **Padding fraction** of the batches (padded positions / all positions) with and without
   length-grouped batching, over one epoch of the same mixture and batch size.
3. **Epoch time with vs without the encoder-feature cache** (the one-time cost of filling the cache is
   printed beside it).

Usage:
    python bench/train_step.py                       # CPU, one thread; a few minutes
    python bench/train_step.py --clips 96 --batch-size 8 --threads 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Padded positions / all positions when each batch is padded to its longest row."""
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - real / total


def sampler_batches(lengths: list[int], batch_size: int, grouped: bool, seed: int) -> list[list[int]]:
    """One epoch of batches as Trainer's sampler forms them (length-grouped or plain random)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    g = torch.Generator().manual_seed(seed)
    if grouped:
        order = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=g))
    else:
        order = torch.randperm(len(lengths), generator=g).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=60, help="espeak clips in the bench corpus")
    parser.add_argument("--batch-size", type=int, default=8)
    # One thread by default: on a shared CPU several threads mostly wait for each other, which makes
    # timings (and so the ratios) noisy.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--data-dir", default=str(REPO / "data"), help="where the bench corpus is prepared")
    args = parser.parse_args()

    import torch
    from transformers import TrainerCallback

    from speechllm.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    base = [
        "experiment=smoke",  # its label targets and cheap describe settings; real models below
        "data.name=bench_train_step",
        f"paths.data_dir={args.data_dir}",
        "model/adapter=qformer",
        "model.adapter.num_queries=16",
        "model.adapter.num_layers=2",
        "model.adapter.hidden_size=256",
        "model.adapter.num_heads=4",
        "model.encoder.source=packaged:whisper-tiny.en",
        "model.encoder.num_taps=4",
        "model.llm.source=packaged:smollm2-135m-instruct",
        f"torch_threads={args.threads or 'null'}",
        f"prepare_args=['data.size={args.clips}','describe.attributes=[transcript,gender,accent,duration]',"
        "'+describe.overrides.transcript.methods=[label]']",
        "trainer.max_steps=-1",
        "trainer.num_train_epochs=1",
        f"trainer.per_device_train_batch_size={args.batch_size}",
        "trainer.save_steps=0",
        "trainer.logging_steps=1000",
        "trainer.report_to=[]",
    ]

    class StepClock(TrainerCallback):
        """Times every optimiser step (end to end) and records the LLM's input shapes per forward."""

        def __init__(self):
            self.ends: list[float] = []
            self.shapes: list[tuple[torch.Size, torch.Tensor]] = []
            self.model = None

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.model = model

            def hook(module, a, kwargs):
                if torch.is_grad_enabled():
                    self.shapes.append(
                        (kwargs["inputs_embeds"].shape, kwargs["attention_mask"].detach().cpu())
                    )

            # The decoder, not the LLM: with cross-entropy the model runs the LM head itself, only at the
            # labelled positions (SpeechLM.forward(labelled_logits_only=True)).
            self.handle = model.llm.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kw):
            self.handle.remove()

    # Run 1: with the encoder-feature cache (filled first; its cost is reported on its own).
    cached_clock = StepClock()
    cached = train(compose([*base, f"paths.output_dir={out / 'cached'}"]), callbacks=[cached_clock])
    # Run 2: the same epoch without the cache (the encoder runs in every step).
    raw_clock = StepClock()
    raw = train(
        compose([*base, f"paths.output_dir={out / 'raw'}", "trainer.cache_encoder_features=false"]),
        callbacks=[raw_clock],
    )

    # Bare LLM forward+backward on the same shapes as the cached run's steps.
    llm = cached_clock.model.llm
    llm.train(False)
    hidden = llm.get_input_embeddings().embedding_dim
    vocab = llm.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)

    def bare(shape, mask):
        embeds = (torch.randn(*shape[:2], hidden, generator=g) * 0.02).requires_grad_(True)
        labels = torch.randint(0, vocab, shape[:2], generator=g).masked_fill(mask == 0, -100)
        loss = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        loss.backward()

    bare(*cached_clock.shapes[0])  # warm-up, as our first step is excluded below
    t0 = time.perf_counter()
    for shape, mask in cached_clock.shapes[1:]:
        bare(shape, mask)
    bare_s = time.perf_counter() - t0
    ours_s = cached_clock.ends[-1] - cached_clock.ends[1]  # steps 2..N (step 1 warms up)
    steps = len(cached_clock.ends) - 2
    tokens = sum(int(m.sum()) for _, m in cached_clock.shapes[1:])

    # Padding: the run's own batches (grouped) and the same epoch's batches from both samplers.
    from speechllm.data.prepared import check_prepared
    from speechllm.train.config import validate_schema
    from speechllm.train.run import load_mixture, row_lengths

    cfg = compose([*base, f"paths.output_dir={out / 'pad'}"])
    top, _, mixture_cfg = validate_schema(cfg)
    mixture = load_mixture(cfg, check_prepared(cfg, list(mixture_cfg.sources())), top, mixture_cfg)
    lengths = row_lengths(cached_clock.model, mixture.dataset)
    grouped = padding_fraction(lengths, sampler_batches(lengths, args.batch_size, True, top.seed))
    plain = padding_fraction(lengths, sampler_batches(lengths, args.batch_size, False, top.seed))
    measured = 1.0 - sum(int(m.sum()) for _, m in cached_clock.shapes) / sum(
        m.numel() for _, m in cached_clock.shapes
    )

    cache_info = cached["encoder_feature_cache"]
    cached_epoch = cached["summary"]["train/runtime"]
    raw_epoch = raw["summary"]["train/runtime"]
    result = {
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        "rows": len(lengths),
        "batch_size": args.batch_size,
        "steps_timed": steps,
        "tokens_per_s_ours": tokens / ours_s,
        "tokens_per_s_bare_llm": tokens / bare_s,
        "step_overhead_pct": 100.0 * (ours_s / bare_s - 1.0),
        "padding_fraction_grouped": grouped,
        "padding_fraction_random": plain,
        "padding_fraction_grouped_measured_in_run": measured,
        "epoch_s_with_cache": cached_epoch,
        "epoch_s_without_cache": raw_epoch,
        "epoch_time_ratio_cache_vs_none": cached_epoch / raw_epoch,
        "cache_fill_s_once": cache_info["seconds"] if cache_info["encoded"] else None,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nstep overhead vs bare LLM fwd+bwd: {result['step_overhead_pct']:+.1f}% "
        f"({result['tokens_per_s_ours']:.0f} vs {result['tokens_per_s_bare_llm']:.0f} tokens/s)\n"
        f"padding fraction: {grouped:.3f} length-grouped vs {plain:.3f} random "
        f"({plain / max(grouped, 1e-9):.1f}x more padding without grouping)\n"
        f"epoch time with / without encoder-feature cache: {result['epoch_time_ratio_cache_vs_none']:.2f} "
        f"({cached_epoch:.1f} s vs {raw_epoch:.1f} s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
