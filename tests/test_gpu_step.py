"""bench/gpu_step.py, the GPU check of the large recipe, run at tiny sizes on CPU through its command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_step_tiny_runs_both_policies_and_reports_each_number(tmp_path):
    out = tmp_path / "gpu_step.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_step.py"), "--tiny", "--batch-size", "2", "--steps", "1",
           "--warmup", "1", "--audio-seconds", "3", "--peak-tflops", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["policy"] for r in results] == ["frozen", "lora"]
    frozen, lora = results
    for r in results:
        assert r["device"] == "cpu" and r["llm_tokens_per_step"] > 0
        for key in ("step_s", "tokens_per_s", "flops_per_step", "mfu", "peak_memory_gib"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["policy"], key)
        assert math.isclose(
            r["mfu"], r["flops_per_step"] / r["step_s"] / 1e12, rel_tol=0.01
        )  # peak 1 TFLOP/s
        assert math.isclose(r["loss"], math.log(2048), rel_tol=0.05)  # random weights: about uniform
    # LoRA adds trainable weights to the same model; the frozen LLM's own weights stay out of the optimiser.
    assert lora["trainable_params"] > frozen["trainable_params"]
    assert (
        lora["total_params"] - frozen["total_params"] == lora["trainable_params"] - frozen["trainable_params"]
    )
