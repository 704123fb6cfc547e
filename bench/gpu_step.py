"""One training step of the large recipe at its real sizes: tokens/s, model FLOPs utilisation, peak memory.

The models are built from their configs with random weights (a step costs the same whatever the
weights' values, and a GPU machine may reach no model hub): a Whisper large-v3 encoder (32 layers, 1280
wide, 128 mel bins, 4 tapped layers, frozen), DeSTA2.5's Q-Former (64 queries per tap, 6 layers, 768
wide) and a Llama-3.1-8B-shaped LLM (32 layers, 4096 wide, 128256 tokens), frozen or with LoRA on
q/k/v/o. Rows are 10-s noise clips with an instruction and an answer, batched by our own collator,
run through `SpeechLM.forward` (the path training takes), then backward and an AdamW step, under bf16
autocast as `trainer.precision=bf16` runs it (encoder and LLM weights in bf16, the adapter in fp32).

FLOPs per step are counted by `torch.utils.flop_counter` on one step (matrix products and attention;
what the hardware really executes, frozen weights' skipped gradients included); MFU is that over the
step time and the GPU's dense bf16 peak (a table of known GPUs, or --peak-tflops).

Usage:
    python bench/gpu_step.py                         # GPU: frozen and LoRA, batch 8, a few minutes
    python bench/gpu_step.py --batch-size 16 --checkpointing
    python bench/gpu_step.py --tiny                  # the same code at tiny sizes on CPU (seconds; a test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Dense bf16 peaks (no sparsity), TFLOP/s, from the vendors' data sheets; matched against the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
}

# (encoder, adapter, LLM) shapes: the real sizes, and a tiny stand-in of each for CPU.
SHAPES = {
    "real": {
        "encoder": dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                        encoder_ffn_dim=5120),
        "adapter": dict(num_queries=64, num_layers=6, hidden_size=768, num_heads=12),
        "llm": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=14336, vocab_size=128256, rope_theta=500000.0),
        "lora": dict(r=16, alpha=32),
    },
    "tiny": {
        "encoder": dict(num_mel_bins=128, d_model=64, encoder_layers=4, encoder_attention_heads=4,
                        encoder_ffn_dim=256),
        "adapter": dict(num_queries=8, num_layers=2, hidden_size=32, num_heads=2),
        "llm": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, vocab_size=2048),
        "lora": dict(r=4, alpha=8),
    },
}  # fmt: skip


def peak_tflops(device, given: float | None) -> float | None:
    """The device's dense bf16 peak: `given`, else the table's entry for its name, else None."""
    import torch

    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build_model(shape: dict, finetune: str, device, tokenizer_dir: str):
    """A SpeechLM of random weights at `shape`, built on `device` (no weights pass through host memory)."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        WhisperConfig,
        WhisperFeatureExtractor,
    )
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from speechllm.model.adapters import QFormerAdapter
    from speechllm.model.encoder import WhisperFeatureEncoder
    from speechllm.model.prompt import PromptConfig
    from speechllm.model.speechlm import (
        EncoderConfig,
        LLMConfig,
        LoraConfigSection,
        SpeechLM,
        apply_finetune,
    )

    half = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # as `load_llm` does for Llama-3
    with torch.device(device):
        torch.set_default_dtype(half)
        try:
            whisper = WhisperEncoder(WhisperConfig(max_source_positions=1500, **shape["encoder"]))
            llm = LlamaForCausalLM(LlamaConfig(pad_token_id=tokenizer.pad_token_id, **shape["llm"]))
        finally:
            torch.set_default_dtype(torch.float32)
        encoder = WhisperFeatureEncoder(
            whisper, WhisperFeatureExtractor(feature_size=shape["encoder"]["num_mel_bins"]), num_taps=4,
            frozen=True, source="random",
        )  # fmt: skip
        llm_cfg = LLMConfig(source="random", finetune=finetune, dtype=str(half).removeprefix("torch."),
                            lora=LoraConfigSection(**shape["lora"]))  # fmt: skip
        llm = apply_finetune(llm, llm_cfg)
        adapter = QFormerAdapter(
            in_dim=encoder.hidden_size, out_dim=shape["llm"]["hidden_size"], num_taps=encoder.num_taps,
            output_norm=True, **shape["adapter"],
        )  # fmt: skip
    config = {
        "encoder": asdict(EncoderConfig(source="random", num_taps=4)),
        "adapter": {"_target_": "speechllm.model.adapters.QFormerAdapter", **shape["adapter"]},
        "llm": asdict(llm_cfg),
        "prompt": asdict(PromptConfig()),
    }
    return SpeechLM(encoder, adapter, llm, tokenizer, config)


def make_rows(batch_size: int, audio_seconds: float, answer_words: int, seed: int = 0) -> list[dict]:
    """Noise clips with a transcript, an instruction and an answer of `answer_words` words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        {
            "audio": (0.05 * rng.standard_normal(int(16000 * audio_seconds))).astype(np.float32),
            "transcript": "the weather is nice today and the meeting starts at nine",
            "instruction": "What can you hear from the audio? Describe the speaker's voice.",
            "target": " ".join(["The speaker is a woman who speaks quickly."] * max(1, answer_words // 8)),
        }
        for _ in range(batch_size)
    ]


def measure(
    model, rows: list[dict], steps: int, warmup: int, peak: float | None, checkpointing: bool
) -> dict:
    """Time `steps` optimiser steps after `warmup` ones; count one step's FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = model.device
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model.collator()(rows).items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> float:
        with autocast:
            loss = model(**batch, labelled_logits_only=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    tokens = int(batch["attention_mask"].sum())
    if device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(device)
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {
        "step_s": round(seconds, 4),
        "llm_tokens_per_step": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "flops_per_step": flops,
        "achieved_tflops": float(f"{flops / seconds / 1e12:.4g}"),
        "mfu": float(f"{flops / seconds / (peak * 1e12):.4g}") if peak else None,
        "peak_memory_gib": round(peak_memory / 2**30, 2),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "loss": round(loss, 4),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (what the test runs)")
    parser.add_argument("--policies", default="frozen,lora", help="LLM fine-tuning policies, comma-separated")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--audio-seconds", type=float, default=10.0)
    parser.add_argument("--answer-words", type=int, default=48)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true", help="recompute LLM activations in backward")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = parser.parse_args(argv)

    import torch

    from speechllm.tiny import make_tiny_llm

    if args.tiny:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        sys.exit("no GPU here: run with --tiny for the CPU stand-in")
    shape = SHAPES["tiny" if args.tiny else "real"]
    peak = peak_tflops(device, args.peak_tflops)
    rows = make_rows(args.batch_size, args.audio_seconds, args.answer_words)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = make_tiny_llm(tmp, chat_format="llama3")  # Llama-3.1's chat layout; ids < 2048
        for policy in args.policies.split(","):
            torch.manual_seed(0)
            model = build_model(shape, policy, device, tokenizer_dir)
            result = {
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "shapes": "tiny" if args.tiny else "whisper-large-v3 + Q-Former + Llama-3.1-8B",
                "policy": policy,
                "batch_size": args.batch_size,
                "audio_seconds": args.audio_seconds,
                "checkpointing": args.checkpointing,
                **measure(model, rows, args.steps, args.warmup, peak, args.checkpointing),
            }
            results.append(result)
            print(json.dumps(result), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
