"""The evaluation: unseen questions, ceiling, agreement, untrained baseline, retention -> report.

`evaluate(cfg)` is what `evaluate.py` calls. Steps, each logged:
1. load the checkpoint (clear errors for a missing or mismatched one) and the clips;
2. build the unseen questions (tasks whose labels are missing are skipped and named);
3. the speech model answers (audio + transcript + question), batched;
4. the text LLM (the checkpoint's LLM source, base weights) answers the same questions from the gold
   description: the ceiling, and agreement with the speech model;
5. the same speech evaluation with the adapter at initialisation (same config and seed);
6. retention: format-following constraints, audio vs description; text-only drift when the LLM's
   weights changed;
7. report.json, report.md, plots and answers.jsonl (every answer, parsed) into the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from speechllm.config import ConfigError, check_section
from speechllm.data.describe_stage import describe_config
from speechllm.data.described import described_rows
from speechllm.digests import weights_digest
from speechllm.eval import retention
from speechllm.eval.answers import (
    AnswerStore,
    speech_answers,
    speech_answers_key,
    text_answers,
    text_answers_key,
)
from speechllm.eval.data import (
    EvalData,
    EvalDataError,
    add_descriptions,
    load_audiofolder,
    load_instruction_set,
)
from speechllm.eval.report import render_markdown, write_json, write_report
from speechllm.eval.scoring import agreement, answer_samples, parse_answers, score, summary
from speechllm.eval.tasks import (
    Item,
    build_items,
    select_tasks,
)
from speechllm.model import SpeechLM
from speechllm.model.speechlm import CheckpointError
from speechllm.sources import load_llm

__all__ = ["CheckpointError", "evaluate"]

log = logging.getLogger(__name__)


def load_checkpoint(path: str):
    """Load a trained SpeechLM, with errors that say what is wrong.

    Args:
        path: checkpoint folder written by ``SpeechLM.save_pretrained``.

    Returns:
        The SpeechLM, in eval mode.

    Raises:
        CheckpointError: the folder does not exist, is not a checkpoint, or its weights do not
            match its config (missing/unexpected/mis-shaped tensors, listed by name).
    """
    if not path or not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (expected a folder written by train.py)")
    try:
        return SpeechLM.from_pretrained(path).eval()
    except CheckpointError:
        raise
    # A config that no longer builds (a bad key, a missing source) is the checkpoint's problem; anything
    # else is a bug and keeps its traceback.
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"checkpoint {path!r} could not be loaded: {type(e).__name__}: {e}") from e


def checkpoint_seed(path: str, default: int) -> tuple[int, str]:
    """The seed training started from, for the untrained baseline.

    Looked up in the checkpoint's config.json (``seed``), else in the training run's Hydra record
    (``.hydra/config.yaml`` in the checkpoint folder or up to two folders above it).

    Returns:
        (seed, where it came from: a file path, or "eval.seed" for `default`).
    """
    with open(os.path.join(path, "config.json")) as f:
        seed = json.load(f).get("seed")
    if isinstance(seed, int):
        return seed, os.path.join(path, "config.json")
    folder = os.path.abspath(path)
    for _ in range(3):
        record = os.path.join(folder, ".hydra", "config.yaml")
        if os.path.isfile(record):
            seed = OmegaConf.load(record).get("seed")
            if isinstance(seed, int):
                return seed, record
        folder = os.path.dirname(folder)
    return default, "eval.seed"


def llm_source(model_cfg: dict) -> str:
    """The LLM source named by a model config (``llm.source``)."""
    llm = model_cfg.get("llm", {})
    source = llm.get("source") if isinstance(llm, dict) else None
    if not source:
        raise CheckpointError(f"the checkpoint's model config names no llm.source: {model_cfg.get('llm')!r}")
    return source


def untrained_model(model_cfg: dict, seed: int):
    """The same SpeechLM with the adapter at initialisation (no trained weights).

    Args:
        model_cfg: the checkpoint's ``model`` config.
        seed: the seed training started from, so the adapter starts where training started.

    Returns:
        A SpeechLM in eval mode.
    """
    torch.manual_seed(seed)
    return SpeechLM.from_config(OmegaConf.create(model_cfg)).eval()


# ----- retention -------------------------------------------------------------------------------------


def format_items(
    rows: Sequence[dict], max_clips: int, names: Sequence[str] = retention.BASE_FOLLOWED
) -> tuple[list[Item], list[retention.FormatConstraint]]:
    """Format-following requests: every request under every named constraint, on each of the first
    `max_clips` clips (clips x constraints x requests items)."""
    items: list[Item] = []
    constraints: list[retention.FormatConstraint] = []
    for r in range(min(max_clips, len(rows))):
        for c in retention.constraints_named(names):
            for request in retention.FORMAT_REQUESTS:
                items.append(Item(r, f"format/{c.name}", retention.format_prompt(request, c), "", ()))
                constraints.append(c)
    return items, constraints


# ----- the whole evaluation ---------------------------------------------------------------------------


def load_data(cfg: DictConfig, e: EvalSettings) -> EvalData:
    """The rows to evaluate: ``eval.instruction_set`` (its own questions) or ``eval.audiofolder`` if set
    (then described), else the described split. `e` is the checked `eval` group; `cfg` gives `paths` and
    `describe`."""
    if e.instruction_set:
        data = load_instruction_set(
            str(e.instruction_set), max_clips=e.max_clips, seed=e.seed, cache_dir=str(cfg.paths.cache_dir)
        )
        describe_cfg = OmegaConf.to_container(cfg.describe, resolve=True) if e.describe_audiofolder else None
        return add_descriptions(data, describe_cfg)
    if e.audiofolder:
        data = load_audiofolder(str(e.audiofolder), split=e.split, max_clips=e.max_clips, seed=e.seed)
        describe_cfg = OmegaConf.to_container(cfg.describe, resolve=True) if e.describe_audiofolder else None
        return add_descriptions(data, describe_cfg)
    rows = described_rows(str(cfg.paths.data_dir), e.data, split=e.split, max_clips=e.max_clips, seed=e.seed)
    return EvalData(rows=rows, name=f"{e.data}/described[{e.split}]")


@dataclass
class RetentionSettings:
    """`eval.retention` (conf/eval/default.yaml documents each key)."""

    format: bool = True
    constraints: list[str] = field(default_factory=lambda: list(retention.BASE_FOLLOWED))
    max_clips: int = 2
    max_new_tokens: int = 40
    drift: Any = "auto"
    drift_max_new_tokens: int = 48


@dataclass
class EvalSettings:
    """Schema of the `eval` group (conf/eval/default.yaml documents each key)."""

    data: str = "demo"
    split: str = "test"
    audiofolder: str | None = None
    instruction_set: str | None = None
    describe_audiofolder: bool = True
    tasks: list[str] | None = None
    max_clips: int | None = 8
    questions_per_task: int = 1
    reference_questions_per_task: int | None = None
    max_new_tokens: int = 32
    batch_size: int = 48
    seed: int = 0
    ceiling: bool = True
    baseline: bool = True
    reuse: bool = True
    samples: int = 8
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    plots: bool = True


def check_eval_config(cfg: DictConfig) -> EvalSettings:
    """Check the `eval` group (and `describe`, when an audiofolder will be described) before any model loads.

    Raises:
        ConfigError: naming an unknown key, a value of the wrong type or out of range.
    """
    e = check_section(EvalSettings, cfg.get("eval"), "eval.")
    if "describe" in cfg:  # first: it reads the user's attribute YAMLs, which eval.tasks may name
        describe_config(cfg.describe)
    if e.max_clips is not None and e.max_clips < 1:
        raise ConfigError(f"eval.max_clips={e.max_clips} must be >= 1, or null for every clip")
    if min(e.questions_per_task, e.max_new_tokens, e.batch_size, e.retention.max_new_tokens) < 1:
        raise ConfigError(
            "eval.questions_per_task, max_new_tokens, batch_size and retention.max_new_tokens must be >= 1"
        )
    if e.reference_questions_per_task is not None and e.reference_questions_per_task < 1:
        raise ConfigError(
            f"eval.reference_questions_per_task={e.reference_questions_per_task} must be >= 1, or null for "
            "as many as eval.questions_per_task"
        )
    try:
        retention.constraints_named(e.retention.constraints)
    except ValueError as err:
        raise ConfigError(f"eval.retention.constraints: {err}") from None
    if e.retention.drift not in ("auto", True, False):
        raise ConfigError(f"eval.retention.drift={e.retention.drift!r}: use auto, true or false")
    if e.tasks is not None:
        try:
            select_tasks([], e.tasks)  # unknown task names fail here, naming the known ones
        except ValueError as err:
            raise ConfigError(f"eval.tasks: {err}") from None
    return e


def on_items(values: list, ref_index: list[int], n_items: int) -> list:
    """Reference answers (one per reference item) placed on the speech model's items (None elsewhere)."""
    out = [None] * n_items
    for i, v in zip(ref_index, values, strict=True):
        out[i] = v
    return out


def evaluate(cfg: DictConfig, out_dir: str | None = None) -> dict:
    """Run the evaluation and write the report.

    Args:
        cfg: the composed ``evaluate.yaml`` config (``checkpoint``, ``eval``, ``paths``).
        out_dir: where to write (default ``cfg.paths.output_dir``, Hydra's run folder).

    Returns:
        The report dict (also written as report.json).

    Raises:
        CheckpointError: missing or mismatched checkpoint.
        EvalDataError: missing data, or no task has labels.
    """
    t0 = time.time()
    e = check_eval_config(cfg)
    out_dir = out_dir or str(cfg.paths.output_dir)
    ckpt = str(cfg.checkpoint)
    model = load_checkpoint(ckpt)
    if model.finetune == "lora":
        # Only inference from here: LoRA folded into the weights skips two matmuls per adapted layer
        # (the answers measured the same on 64 of 64 demo questions, 12% sooner).
        model.llm.merge_adapter()
    model_cfg = model.model_config
    log.info("loaded checkpoint %s", ckpt)
    data = load_data(cfg, e)
    untranscribed = sum(r.get("transcript") is None for r in data.rows) if model.prompt.transcript else 0
    rows = data.rows = model.with_transcripts(data.rows)
    if untranscribed:
        data.notes.append(f"{untranscribed} clip(s) had no transcript; the checkpoint's Whisper transcribed them")
    if data.items is not None:  # an external instruction set brings its own questions and references
        items, skipped = data.items, {}
        ref_items = items
    else:
        columns = sorted({k for r in rows for k in r})
        tasks, skipped = select_tasks(columns, e.tasks or None)
        items, dropped = build_items(rows, tasks, e.questions_per_task, e.seed)
        skipped.update(dropped)
        # The ceiling and the baseline may answer only each clip's first phrasings: the same questions
        # the speech model is asked first (build_items assigns phrasings in the same order for any count).
        ref_q = e.reference_questions_per_task
        ref_items = (
            build_items(rows, tasks, ref_q, e.seed)[0] if ref_q and ref_q < e.questions_per_task else items
        )
    position = {(it.row, it.task, it.question): i for i, it in enumerate(items)}
    ref_index = [position[(it.row, it.task, it.question)] for it in ref_items]

    for name, why in skipped.items():
        log.info("skipping task %s: %s", name, why)
    if not items:
        raise EvalDataError(f"nothing to evaluate in {data.name}: every task was skipped ({skipped})")
    log.info(
        "evaluating %d clips, %d questions over tasks %s",
        len(rows),
        len(items),
        sorted({it.task for it in items}),
    )
    gen = {"max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size}
    fmt_items, constraints = (
        format_items(rows, e.retention.max_clips, e.retention.constraints) if e.retention.format else ([], [])
    )
    fmt_gen = {"max_new_tokens": e.retention.max_new_tokens, "batch_size": e.batch_size}

    # 3. speech model
    speech_ans = speech_answers(model, rows, items, **gen)
    speech_parsed = parse_answers(items, speech_ans)
    report: dict = {"checkpoint": os.path.abspath(ckpt), "unseen": score(items, speech_parsed)}
    answers = {"speech": speech_ans}
    parsed = {"speech": speech_parsed}
    speech_fmt = speech_answers(model, rows, fmt_items, **fmt_gen) if fmt_items else []
    log.info("speech model done (%.0f s)", time.time() - t0)

    # 4. ceiling: the base text LLM reading the gold description. A frozen LLM inside the speech
    # model *is* the base LLM, so it is reused instead of loading a second copy.
    source = llm_source(model_cfg)
    if model.finetune == "frozen":
        llm, tok = model.llm, model.tokenizer
    else:
        llm, tok = load_llm(source, dtype=model.llm.dtype)
    llm.eval()
    store = AnswerStore(str(cfg.paths.cache_dir) if e.reuse else None)
    llm_digest = weights_digest(llm)
    if e.ceiling:
        text_ans = store.get("ceiling", text_answers_key(llm_digest, rows, ref_items, None, gen),
                             lambda: text_answers(llm, tok, rows, ref_items, **gen))  # fmt: skip
        text_parsed = parse_answers(ref_items, text_ans)
        report["ceiling"] = score(ref_items, text_parsed)
        report["agreement"] = agreement(ref_items, [speech_parsed[i] for i in ref_index], text_parsed)
        answers["text"] = on_items(text_ans, ref_index, len(items))
        parsed["text"] = on_items(text_parsed, ref_index, len(items))
    # Format retention compares speech and text under one system prompt: the speech model's.
    speech_system = model.prompt.system or ""
    text_fmt = []
    if fmt_items:
        text_fmt = store.get(
            "format-text",
            text_answers_key(llm_digest, rows, fmt_items, speech_system, fmt_gen),
            lambda: text_answers(llm, tok, rows, fmt_items, **fmt_gen, system=speech_system),
        )
    log.info("text LLM done (%.0f s)", time.time() - t0)

    # 5. untrained baseline
    base_fmt: list[str] = []
    if e.baseline:
        seed, seed_from = checkpoint_seed(ckpt, e.seed)
        data.notes.append(f"untrained baseline: adapter initialised with seed {seed} (from {seed_from})")
        base_model = untrained_model(model_cfg, seed)
        base_weights = {n: weights_digest(getattr(base_model, n)) for n in ("encoder", "adapter", "llm")}
        base_ans = store.get("baseline", speech_answers_key(base_weights, base_model.model_config, rows, ref_items, gen),
                             lambda: speech_answers(base_model, rows, ref_items, **gen))  # fmt: skip
        base_parsed = parse_answers(ref_items, base_ans)
        report["baseline"] = score(ref_items, base_parsed)
        if e.ceiling:  # what training must beat: agreement with the ceiling before any training
            report["baseline_agreement"] = agreement(ref_items, base_parsed, text_parsed)
        answers["baseline"] = on_items(base_ans, ref_index, len(items))
        parsed["baseline"] = on_items(base_parsed, ref_index, len(items))
        if fmt_items:
            base_fmt = store.get(
                "format-baseline",
                speech_answers_key(base_weights, base_model.model_config, rows, fmt_items, fmt_gen),
                lambda: speech_answers(base_model, rows, fmt_items, **fmt_gen),
            )
        del base_model
        log.info("untrained baseline done (%.0f s)", time.time() - t0)

    if store.reused:
        data.notes.append(
            f"reused from an earlier evaluation (same weights, prompts and audio): {', '.join(store.reused)}"
        )
        log.info("reused stored answers: %s", ", ".join(store.reused))

    # 6. retention
    report["retention"] = {}
    if fmt_items:
        s = retention.format_rate(speech_fmt, constraints)
        t = retention.format_rate(text_fmt, constraints)
        b = retention.format_rate(base_fmt, constraints) if base_fmt else {"rate": None}  # no baseline run
        report["retention"]["format"] = {
            "speech": s["rate"],
            "text": t["rate"],
            "delta": retention.forgetting_delta(s["rate"], t["rate"], s["n"]),
            "baseline": b["rate"],
            "n": s["n"],
            "by_constraint_speech": s["by_constraint"],
            "by_constraint_text": t["by_constraint"],
        }
    report["retention"]["drift"] = _drift(model, llm, tok, e)

    # 7. report
    report["summary"] = summary(report)
    report["skipped"] = skipped
    report["samples"] = answer_samples(items, answers, e.samples)
    if fmt_items:
        report["format_samples"] = [
            {"constraint": c.name, "prompt": it.question, "speech": a, "text": b}
            for it, c, a, b in list(zip(fmt_items, constraints, speech_fmt, text_fmt, strict=True))[:4]
        ]
    report["notes"] = data.notes + [
        "chance = majority rate (always answering the most frequent gold label); chance_uniform = 1/classes",
        "answers mentioning several classes count as the first asserted one; unparseable answers are wrong",
    ]
    report["meta"] = {
        "data": data.name,
        "n_clips": len(rows),
        "n_questions": len(items),
        "questions_per_task": e.questions_per_task,
        "reference_questions": len(ref_items),
        "max_new_tokens": e.max_new_tokens,
        "llm": source,
        "seconds": time.time() - t0,
    }
    if e.plots:
        paths = write_report(report, out_dir)
    else:
        paths = {"json": write_json(report, out_dir), "md": os.path.join(out_dir, "report.md")}
        with open(paths["md"], "w") as f:
            f.write(render_markdown(report))
    write_answers(os.path.join(out_dir, "answers.jsonl"), items, rows, answers, parsed)
    log.info("wrote %s (%.0f s)", paths["json"], time.time() - t0)
    return report


def write_answers(
    path: str,
    items: Sequence[Item],
    rows: Sequence[dict],
    answers: dict[str, list[str]],
    parsed: dict[str, list[str | None]],
) -> None:
    """One JSON line per question: the clip, the question, the gold value, and every model's answer and
    what it parsed to (as scored, from :func:`parse_answers`), so any number in the report can be traced
    to the answers behind it."""
    with open(path, "w") as f:
        for i, it in enumerate(items):
            line = {
                "task": it.task,
                "clip_id": rows[it.row].get("clip_id"),
                "question": it.question,
                "gold": it.gold,
            }
            for name in answers:
                line[name] = answers[name][i]
                line[f"{name}_parsed"] = parsed[name][i]
            f.write(json.dumps(line) + "\n")


def _drift(model, llm, tok, e) -> dict:
    """Text-only drift of the speech model's LLM from the base, when its weights changed (or forced)."""
    mode = e.retention.drift
    if mode is False:
        return {"skipped": "disabled (eval.retention.drift=false)"}
    tuned = model.llm
    changed = model.finetune != "frozen" and retention.llm_weights_changed(llm, tuned)
    if mode == "auto" and not changed:
        return {"skipped": "the LLM's weights are unchanged (frozen); text behaviour equals the base"}
    kw = {"max_new_tokens": e.retention.drift_max_new_tokens, "batch_size": e.batch_size}
    out = retention.text_drift(llm, tuned, tok, **kw)
    out["weights_changed"] = float(changed)
    out["base"] = retention.text_behaviour(llm, tok, **kw)
    out["tuned"] = retention.text_behaviour(tuned, tok, **kw)
    return out
