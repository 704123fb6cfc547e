"""Which renderer does a text LLM understand best? Ask it about each clip's description and score.

The frozen LLM only ever sees the description, so the renderer that lets it answer "What is the
speaker's gender?" correctly most often is the one whose facts survive into its targets. For each
clip, every renderer's description is given to the LLM (in the same chat the target stage uses) with
one question per attribute; answers are parsed with `speechllm.parsing.parse_label` and compared
with the attribute value the description states.

    python bench/renderers.py --corpus data/demo/corpus --clips 40
"""

from __future__ import annotations

import argparse
import os
import random
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from speechllm.audio import load_audio  # noqa: E402
from speechllm.corpus import read_audiofolder  # noqa: E402
from speechllm.describe import Clip, describe_clips, load_configs, render  # noqa: E402
from speechllm.parsing import parse_label  # noqa: E402
from speechllm.sources import load_llm  # noqa: E402
from speechllm.textllm import description_messages, generate_chat  # noqa: E402

# attribute -> (parse_label task, question). The options are named in the question so that every
# renderer is asked the same answerable question.
QUESTIONS: dict[str, tuple[str, str]] = {
    "gender": ("gender", "What is the speaker's gender?"),
    "accent": ("accent", "What accent does the speaker have?"),
    "pitch": ("pitch", "Is the speaker's voice low, normal or high in pitch?"),
    "speaking_rate": ("speed", "Does the speaker talk slowly, at a normal speed, or fast?"),
    "volume": ("volume", "Is the speaker quiet, at a normal volume, or loud?"),
}
ATTRIBUTES = ["transcript", "gender", "accent", "pitch", "speaking_rate", "volume", "duration"]


def measure_renderers(
    clips: list[Clip],
    llm_source: str = "packaged:smollm2-135m-instruct",
    renderers: tuple[str, ...] = ("desta2", "natural"),
    max_new_tokens: int = 32,
) -> dict[str, dict[str, float]]:
    """Accuracy of the LLM's answers about each renderer's descriptions.

    Args:
        clips: clips with labels (`text`, `gender`, `accent`, ...) for the label-based attributes.
        llm_source: the text LLM (a model source).
        renderers: renderer names to compare.
        max_new_tokens: answer length limit.

    Returns:
        renderer -> {attribute: accuracy, "mean": mean over attributes}, plus "chance" -> majority-class
        rate per attribute.
    """
    configs, order = load_configs(ATTRIBUTES, overrides={"transcript": {"methods": ["label", "asr"]}})
    describe_clips(clips, ATTRIBUTES, configs, order, renderers[0])
    model, tokenizer = load_llm(llm_source)
    model.eval()
    results: dict[str, dict[str, float]] = {}
    for renderer in renderers:
        texts = [render(renderer, c.values, ATTRIBUTES, configs) for c in clips]
        scores = {}
        for attr, (task, question) in QUESTIONS.items():
            golds = [c.values[attr] for c in clips]
            classes = sorted(set(golds) | set(configs[attr].get("words", [])))
            chats = [description_messages(t, question) for t in texts]
            replies = generate_chat(model, tokenizer, chats, max_new_tokens=max_new_tokens)
            scores[attr] = sum(
                parse_label(r, task, classes) == g for r, g in zip(replies, golds, strict=True)
            ) / len(clips)
        scores["mean"] = sum(scores.values()) / len(scores)
        results[renderer] = scores
    results["chance"] = {
        attr: Counter(c.values[attr] for c in clips).most_common(1)[0][1] / len(clips) for attr in QUESTIONS
    }
    results["chance"]["mean"] = sum(results["chance"].values()) / len(QUESTIONS)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="an audiofolder with labels (e.g. the demo corpus)")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--llm", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = read_audiofolder(args.corpus)
    rows = random.Random(args.seed).sample(rows, min(args.clips, len(rows)))
    clips = []
    for r in rows:
        audio = load_audio(r["audio_path"])
        labels = {k[len("label_") :]: v for k, v in r.items() if k.startswith("label_")}
        clips.append(Clip(r["clip_id"], audio.array, audio.sr, labels=labels))
    results = measure_renderers(clips, args.llm)
    attrs = [*QUESTIONS, "mean"]
    print(f"{'renderer':10s} " + " ".join(f"{a:>13s}" for a in attrs))
    for name, scores in results.items():
        print(f"{name:10s} " + " ".join(f"{scores[a]:13.2f}" for a in attrs))


if __name__ == "__main__":
    main()
