"""SpeechLM from the packaged real models (Whisper tiny.en + SmolLM2-135M) on an espeak-ng clip."""

import pytest
import torch

from speechllm.model import SpeechLM


@pytest.mark.slow
def test_packaged_models_answer_about_an_espeak_clip(
    whisper_tiny_en_source, smollm2_source, espeak, tmp_path
):
    wav = espeak("Please turn the lights off in the kitchen.", tmp_path / "clip.wav")
    torch.manual_seed(0)
    model = SpeechLM.from_config(
        {
            "encoder": {"source": whisper_tiny_en_source},
            "adapter": {"_target_": "speechllm.model.adapters.QFormerAdapter"},
            "llm": {"source": smollm2_source},
            "prompt": {"transcript": True},
        }
    )
    assert model.encoder.layers == [1, 2, 3, 4]  # tiny.en has 4 layers: all tapped
    # No transcript in the row: Whisper writes it (espeak at 22.05 kHz is resampled on the way).
    rows = [{"audio_path": str(wav), "instruction": "What can you hear from the audio?"}]
    rows = model.with_transcripts(rows)
    assert "light" in rows[0]["transcript"].lower()
    answers = model.generate(rows, max_new_tokens=8)
    assert len(answers) == 1 and answers[0].strip()
