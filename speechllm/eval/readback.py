"""What the adapter writes, read back as text: is an attribute lost by the adapter or by the reader?

The alignment warm-up teaches the adapter to write each clip's description as the LLM's token
embeddings. Reading its output back (each audio slot -> the nearest token embedding, decoded) and
parsing that text as the evaluation parses answers gives, per attribute, how often the adapter states
the right class for held-out clips, with no LLM pass. An attribute read back well but answered at chance
is lost by the reader (the LLM with its LoRA); one read back at chance is not written.

    python -m speechllm.eval.readback CHECKPOINT [--data-dir data] [--data demo] [--split test]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch

from speechllm.data.described import described_rows
from speechllm.eval.tasks import balanced_accuracy, gold_value, select_tasks, task_classes
from speechllm.parsing import parse_label


@torch.no_grad()
def read_back(model, rows: Sequence[dict]) -> list[str]:
    """The text the adapter writes for each row's audio: every audio slot's nearest token embedding.

    Args:
        model: a `SpeechLM`.
        rows: rows with `audio_path` (or `audio`, a 16 kHz array).

    Returns:
        One decoded text per row.
    """
    embeddings = model.llm.get_input_embeddings().weight.detach().float()
    features = model.encode_audio([r.get("audio_path", r.get("audio")) for r in rows])
    texts = []
    for feats in features:
        mask = torch.ones(1, feats.shape[1], dtype=torch.bool)
        embeds, slots = model.audio_embeddings(encoder_features=feats[None], encoder_mask=mask)
        nearest = torch.cdist(embeds[0][slots[0]].float(), embeddings).argmin(-1)
        texts.append(model.tokenizer.decode(nearest.tolist()))
    return texts


def readback_scores(texts: Sequence[str], rows: Sequence[dict]) -> dict[str, dict]:
    """Balanced accuracy of the classes parsed from read-back texts, per attribute task the rows label.

    Returns:
        task -> {"balanced_accuracy", "n", "chance" (1/classes)}.
    """
    tasks, _ = select_tasks(list(rows[0]) if rows else [])
    out = {}
    for task in tasks:
        if task.kind != "label":
            continue
        classes = task_classes(rows, task)
        pairs = [(gold, parse_label(text, task.name, classes))
                 for text, row in zip(texts, rows, strict=True) if (gold := gold_value(row, task)) is not None]  # fmt: skip
        if len(classes) < 2 or not pairs:
            continue
        golds, preds = zip(*pairs, strict=True)
        out[task.name] = {"balanced_accuracy": balanced_accuracy(golds, preds, classes), "n": len(pairs),
                          "chance": 1.0 / len(classes)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a SpeechLM checkpoint folder")
    parser.add_argument("--data-dir", default="data", help="prepared datasets (paths.data_dir)")
    parser.add_argument("--data", default="demo", help="the described dataset's name")
    parser.add_argument("--split", default="test", help="which split's clips to read back")
    parser.add_argument("--show", type=int, default=3, help="print this many read-back texts")
    args = parser.parse_args(argv)

    from speechllm.model import SpeechLM

    rows = described_rows(args.data_dir, args.data, split=args.split)
    model = SpeechLM.from_pretrained(args.checkpoint).eval()
    texts = read_back(model, rows)
    for row, text in list(zip(rows, texts, strict=True))[: args.show]:
        print(f"{row.get('clip_id')}: {text.strip()!r}")
    scores = {
        task: {k: round(v, 3) for k, v in s.items()} for task, s in readback_scores(texts, rows).items()
    }
    print(json.dumps({"checkpoint": args.checkpoint, "clips": len(rows), "readback": scores}, indent=2))


if __name__ == "__main__":
    main()
