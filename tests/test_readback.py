"""Reading the adapter's output back as text tells whether it writes an attribute (speechllm.eval.readback)."""

import numpy as np
import torch
from test_eval import _model_cfg

from speechllm.eval.readback import read_back, readback_scores
from speechllm.model import SpeechLM


def test_readback_reads_what_the_adapter_writes_and_scores_it(tiny_whisper_source, tiny_llm_source):
    model = SpeechLM.from_config(_model_cfg(tiny_llm_source, tiny_whisper_source))
    written = ["A man speaks quickly.", "A woman speaks slowly.", "A man speaks slowly."]
    table = model.llm.get_input_embeddings().weight.detach()
    queue = [table[model.tokenizer(t, add_special_tokens=False).input_ids] for t in written]

    # Stands in for an adapter that writes each text's token embeddings.
    def writes_the_texts(**encoder_output):
        embeds = queue.pop(0)
        return embeds[None], torch.ones(1, len(embeds), dtype=torch.bool)

    model.audio_embeddings = writes_the_texts
    tone = (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    rows = [
        {"clip_id": "a", "audio": tone, "label_gender": "male", "label_speed": "fast"},
        {"clip_id": "b", "audio": tone, "label_gender": "female", "label_speed": "slow"},
        {"clip_id": "c", "audio": tone, "label_gender": "female", "label_speed": "slow"},
    ]

    texts = read_back(model, rows)

    assert texts == written  # each slot's nearest token is the token whose embedding it is
    scores = readback_scores(texts, rows)
    # Clip c is a woman written as "A man": gender recall is 1/1 for male, 1/2 for female.
    assert scores["gender"] == {"balanced_accuracy": 0.75, "n": 3, "chance": 0.5}
    assert scores["speed"]["balanced_accuracy"] == 1.0
    assert set(scores) == {"gender", "speed"}  # only the tasks the rows label
