"""Text-only replay sets: general chats mixed into speech training so the LLM keeps its abilities.

Each source writes ``{data_dir}/replay/{name}/``, rows of:
    ``messages`` (list of ``{"role", "content"}``: a user turn and an assistant turn),
    ``replay_source`` (experience | magpie | safety), ``replay_id``,
    provenance: ``replay_llm`` (source of the LLM that wrote the answer, "" for experience),
    ``replay_prompt`` (the exact text that LLM saw for the answer, "" for experience),
    ``replay_generation`` (JSON of the settings), ``replay_kind`` (safety: harmful | lookalike;
    magpie: magpie; experience: the file it came from).

Sources:
    ``experience``: a chat or instruction dataset on disk (HF ``save_to_disk`` folder or JSONL),
    sampled to ``size``. Rows may hold ``messages``, ShareGPT ``conversations``, Alpaca
    ``instruction``/``input``/``output``, ``prompt``/``response`` or ``question``/``answer``.
    ``magpie`` (arXiv 2406.08464): the frozen LLM reads only its chat template's user-turn prefix
    and writes a user request (sampled, T 1.1, top_p 0.99); then it answers that request greedily.
    Empty, truncated, colon-ended (an unfinished "Here is my text:") and duplicate requests are
    dropped, each counted with its reason.
    ``safety``: harmful requests we wrote (below) answered by the frozen LLM under a safety system
    prompt, kept only when the answer is a refusal; plus safe requests that merely look alarming
    ("how do I kill a Python process"), kept only with a helpful (non-refusing) answer, so the
    mix does not teach over-refusal. The stored chat has no system turn: training teaches the
    refusal without the prompt (context distillation).

The mixing itself (``replay.ratio``, ``replay.weights``) is read by training, not here.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from speechllm.config import ConfigError, check_section
from speechllm.data.layout import replay_dir
from speechllm.data.stage import StageResult, load_stage, read_rejects, run_stage
from speechllm.data.targets import trim_to_sentence
from speechllm.safety import HARMFUL_REQUESTS, LOOKALIKE_REQUESTS, is_refusal
from speechllm.textllm import Generation, GenerationConfig, LazyLLM, chat_prompt, generate_texts

logger = logging.getLogger(__name__)


# Generation-time only: small models rarely refuse unprompted; the stored chats have no system turn.
DEFAULT_SAFETY_SYSTEM = (
    "You are a helpful and harmless assistant. If a request could hurt people, break the law or "
    "harm the user, refuse politely in one or two sentences and say why. Otherwise, help."
)


# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class MagpieConfig:
    """Magpie self-chat settings.

    Attributes:
        size: rows to keep.
        oversample: attempts = ceil(size * oversample), since filters drop some.
        system: system prompt in the user-turn prefix; None: whatever the template puts there.
        instruction: sampling settings for the user turn.
        answer: decoding settings for the assistant turn (greedy).
        answer_on_truncated: ``trim`` (cut to the last complete sentence) or ``drop``.
        chunk_size: attempts per resumable part.
    """

    size: int = 16
    oversample: float = 2.0
    system: str | None = None
    instruction: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(
            max_new_tokens=48, do_sample=True, temperature=1.1, top_p=0.99
        )
    )
    answer: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64))
    answer_on_truncated: str = "trim"
    chunk_size: int = 32

    def settings(self) -> dict:
        """What decides the attempts' chats (recorded in each row and in the stage's fingerprint): `size`
        and `oversample` reach them only as the number of attempts, and the sampling seed is the
        instruction's own; the chunk size stays, since each chunk samples with its own salt."""
        return {"system": self.system, "instruction": self.instruction.settings(), "answer": self.answer.settings(),
                "answer_on_truncated": self.answer_on_truncated, "chunk_size": self.chunk_size}  # fmt: skip


@dataclass
class SafetyConfig:
    """Safety demonstrations settings.

    Attributes:
        system: system prompt used while generating (not stored); None uses DEFAULT_SAFETY_SYSTEM,
            "" none.
        harmful: how many of HARMFUL_REQUESTS to ask (None: all).
        lookalike: how many of LOOKALIKE_REQUESTS to ask (None: all).
        answer: decoding settings.
        answer_on_truncated: ``trim`` or ``drop``.
    """

    system: str | None = None
    harmful: int | None = 12
    lookalike: int | None = 12
    answer: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64))
    answer_on_truncated: str = "trim"

    @property
    def system_prompt(self) -> str:
        """The system prompt generation uses: `system`, or DEFAULT_SAFETY_SYSTEM when it is None."""
        return DEFAULT_SAFETY_SYSTEM if self.system is None else self.system

    def settings(self) -> dict:
        """What decides the rows (the requests asked are recorded beside it)."""
        return {"system": self.system_prompt, "answer": self.answer.settings(),
                "answer_on_truncated": self.answer_on_truncated}  # fmt: skip


@dataclass
class ExperienceConfig:
    """Experience replay settings.

    Attributes:
        path: HF dataset folder (``save_to_disk``) or a ``.jsonl`` file; required when built.
        split: split to take when the folder holds a DatasetDict.
        size: rows to sample (all if fewer).
        seed: the sample's seed.
    """

    path: str | None = None
    split: str = "train"
    size: int = 1000
    seed: int = 0


@dataclass
class ReplayConfig:
    """Schema of the ``replay`` config group.

    Attributes:
        llm: source of the frozen LLM writing magpie and safety chats.
        dtype: torch dtype name, or None.
        build: which sources data prep builds (names of BUILDERS).
        ratio: read by training: replay examples as a fraction of the speech examples (0: none).
        weights: read by training: relative share of each source within the replay examples.
        magpie, safety, experience: per-source settings.
    """

    llm: str = "packaged:smollm2-135m-instruct"
    dtype: str | None = None
    build: list[str] = field(default_factory=lambda: ["magpie", "safety"])
    ratio: float = 0.0
    weights: dict[str, float] = field(
        default_factory=lambda: {"experience": 1.0, "magpie": 1.0, "safety": 1.0}
    )
    magpie: MagpieConfig = field(default_factory=MagpieConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    experience: ExperienceConfig = field(default_factory=ExperienceConfig)


def replay_config(node: DictConfig | dict | None) -> ReplayConfig:
    """Validate a ``replay`` config node against :class:`ReplayConfig`.

    Args:
        node: the ``replay`` node; None gives the defaults.

    Returns:
        A ReplayConfig.

    Raises:
        ValueError: unknown key, unknown source name, or bad values.
    """
    cfg = check_section(ReplayConfig, node, "replay.")
    for name in list(cfg.build) + list(cfg.weights):
        if name not in BUILDERS:
            raise ConfigError(f"replay: unknown source {name!r}; known: {tuple(BUILDERS)}")
    if not 0.0 <= cfg.ratio < 1.0:
        # Training reads the mixture from this check too; checked at preparation as well, since a prepare
        # run with ratio=1.5 would build replay for a mix that cannot be trained.
        raise ConfigError(
            f"replay.ratio={cfg.ratio} is outside [0, 1): it is the share of training rows that are text replay "
            "(0.05 = 5%), and a run needs some speech rows"
        )
    for name, weight in cfg.weights.items():
        if weight < 0:
            raise ConfigError(f"replay.weights.{name}={weight} must be >= 0")
    for name, how in (("magpie", cfg.magpie.answer_on_truncated), ("safety", cfg.safety.answer_on_truncated)):
        if how not in ("trim", "drop"):
            raise ConfigError(f"replay.{name}.answer_on_truncated={how!r}: use trim or drop")
    if cfg.magpie.size < 1 or cfg.magpie.oversample < 1.0 or cfg.magpie.chunk_size < 1:
        raise ConfigError("replay.magpie: size and chunk_size must be >= 1 and oversample >= 1.0")
    for name in ("harmful", "lookalike"):
        count = getattr(cfg.safety, name)
        if count is not None and count < 0:
            raise ConfigError(f"replay.safety.{name}={count} must be >= 0, or null for all")
    if cfg.experience.size < 1:
        raise ConfigError(f"replay.experience.size={cfg.experience.size} must be >= 1")
    cfg.magpie.instruction.check("replay.magpie.instruction")
    cfg.magpie.answer.check("replay.magpie.answer")
    cfg.safety.answer.check("replay.safety.answer")
    return cfg


# ---------------------------------------------------------------------------------------------
# Helpers


def user_turn_prefix(tokenizer, system: str | None = None) -> str:
    """The chat-template text that opens a user turn, with nothing after it (Magpie's prompt).

    Found by rendering a user turn holding a sentinel and cutting at the sentinel, so it works for
    any template (ChatML, Llama-3, ...), including a default system turn the template adds itself.

    Args:
        tokenizer: a tokenizer with a chat template.
        system: a system prompt to put before the user turn, or None.

    Returns:
        The prefix text.
    """
    sentinel = "\u2063MAGPIE\u2063"
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": sentinel}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if sentinel not in text:
        raise ValueError("user_turn_prefix: the chat template does not render the user message verbatim")
    return text.split(sentinel, 1)[0]


def _finish_answer(text: str, truncated: bool, how: str) -> tuple[str, str | None]:
    """(answer, reject reason or None) after the truncation policy."""
    if truncated:
        if how == "drop":
            return "", "answer hit max_new_tokens"
        text = trim_to_sentence(text)
        if not text:
            return "", "answer hit max_new_tokens with no complete sentence"
    if not text:
        return "", "empty answer"
    return text, None


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _row(source, rid, user, answer, llm, prompt, generation, kind) -> dict:
    return {
        "replay_id": rid,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "replay_source": source,
        "replay_llm": llm,
        "replay_prompt": prompt,
        "replay_generation": generation,
        "replay_kind": kind,
    }


# ---------------------------------------------------------------------------------------------
# Magpie


def instruction_reject_reason(g: Generation, seen: set[str]) -> str | None:
    """Why a sampled Magpie user turn must be dropped (None: keep it).

    Args:
        g: the generated user turn.
        seen: normalised user turns kept so far.

    Returns:
        ``"instruction hit max_new_tokens"`` (cut off), ``"empty instruction"``,
        ``"instruction ends with a colon"`` (it announces content that never came) or
        ``"duplicate instruction"``; or None.
    """
    if g.truncated:
        return "instruction hit max_new_tokens"
    if not g.text.strip():
        return "empty instruction"
    if g.text.rstrip().endswith(":"):
        return "instruction ends with a colon"
    if _normalise(g.text) in seen:
        return "duplicate instruction"
    return None


class MagpieWriter:
    """``process`` of the Magpie stage: a chunk of attempt ids -> chats and counted rejects."""

    def __init__(self, cfg: ReplayConfig, llm: LazyLLM):
        self.cfg, self.llm = cfg, llm
        self.record = json.dumps(cfg.magpie.settings(), sort_keys=True)

    def __call__(self, chunk: list[dict]):
        model, tokenizer = self.llm.get()
        m = self.cfg.magpie
        prefix = user_turn_prefix(tokenizer, m.system)
        asks = generate_texts(model, tokenizer, [prefix] * len(chunk), m.instruction, salt=chunk[0]["replay_id"])
        rejects, keep, seen = [], [], set()
        for item, g in zip(chunk, asks, strict=True):
            text, rid = g.text, item["replay_id"]
            reason = instruction_reject_reason(g, seen)
            if reason:
                rejects.append({"replay_id": rid, "reason": reason})
                continue
            seen.add(_normalise(text))
            keep.append((rid, text))
        prompts = [chat_prompt(tokenizer, self._answer_messages(text)) for _, text in keep]
        answers = generate_texts(model, tokenizer, prompts, m.answer)
        rows = []
        for (rid, text), prompt, g in zip(keep, prompts, answers, strict=True):
            answer, reason = _finish_answer(g.text, g.truncated, m.answer_on_truncated)
            if reason:
                rejects.append({"replay_id": rid, "reason": reason})
                continue
            rows.append(_row("magpie", rid, text, answer, self.cfg.llm, prompt, self.record, "magpie"))
        return StageResult(rows=rows, rejects=rejects)

    def _answer_messages(self, instruction: str) -> list[dict]:
        system = self.cfg.magpie.system
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": instruction}
        ]


def _dedupe_and_cap(size: int):
    """``process`` of Magpie's final pass (one chunk): drop duplicates across chunks, keep ``size``."""

    def process(rows: list[dict]):
        kept, rejects, seen = [], [], set()
        for row in rows:
            norm = _normalise(row["messages"][0]["content"])
            if norm in seen:
                rejects.append({"replay_id": row["replay_id"], "reason": "duplicate instruction"})
            elif len(kept) >= size:
                rejects.append({"replay_id": row["replay_id"], "reason": f"beyond replay.magpie.size={size}"})
            else:
                seen.add(norm)
                kept.append(row)
        return StageResult(rows=kept, rejects=rejects)

    return process


# Every builder: (out_dir, the validated replay config, shard "i/n" or (i, n), the LLM shared by the builders
# (None: cfg.llm, loaded on first use)) -> the dataset, or None while other shards still run.


def build_magpie(out_dir, cfg: ReplayConfig, *, shard=(0, 1), llm: LazyLLM | None = None):
    """The Magpie set (resumable, shardable): attempts in ``out_dir/../_raw/<name>``, the final set in
    ``out_dir`` (``{data_dir}/replay/magpie``), deduplicated and capped at ``magpie.size``."""
    out_dir = Path(out_dir)
    raw_dir = out_dir.parent / "_raw" / out_dir.name
    attempts = math.ceil(cfg.magpie.size * cfg.magpie.oversample)
    fp = {"stage": "replay/magpie", "llm": cfg.llm, "dtype": cfg.dtype, "magpie": cfg.magpie.settings()}
    inputs = [{"replay_id": f"magpie-{i:06d}"} for i in range(attempts)]
    llm = llm or LazyLLM(cfg.llm, cfg.dtype)
    raw = run_stage(
        raw_dir, fp, inputs, MagpieWriter(cfg, llm), key="replay_id",
        chunk_size=cfg.magpie.chunk_size, shard=shard, desc="replay/magpie",
    )  # fmt: skip
    if raw is None:
        return None
    final = run_stage(
        out_dir, {**fp, "size": cfg.magpie.size, "attempts": attempts}, [dict(r) for r in raw],
        _dedupe_and_cap(cfg.magpie.size), key="replay_id", chunk_size=max(1, len(raw)), desc="replay/magpie:final",
    )  # fmt: skip
    reasons = Counter(r["reason"] for r in read_rejects(raw_dir) + read_rejects(out_dir))
    _write_stats(
        out_dir, {"source": "magpie", "attempts": attempts, "rows": len(final), "skipped": dict(reasons)}
    )
    return load_stage(out_dir) if final is not None else None


# ---------------------------------------------------------------------------------------------
# Safety


def safety_inputs(cfg: SafetyConfig) -> list[dict]:
    """The requests to ask: harmful ones, then look-alikes (``replay_id``, ``request``, ``kind``)."""
    harmful = HARMFUL_REQUESTS[: cfg.harmful] if cfg.harmful is not None else HARMFUL_REQUESTS
    lookalike = LOOKALIKE_REQUESTS[: cfg.lookalike] if cfg.lookalike is not None else LOOKALIKE_REQUESTS
    return [
        {"replay_id": f"harmful-{i:03d}", "request": r, "kind": "harmful"} for i, r in enumerate(harmful)
    ] + [
        {"replay_id": f"lookalike-{i:03d}", "request": r, "kind": "lookalike"}
        for i, r in enumerate(lookalike)
    ]


def judge_safety(kind: str, answer: str) -> str | None:
    """Why a safety answer must not be kept (None: keep it).

    Args:
        kind: ``harmful`` (keep only refusals) or ``lookalike`` (keep only helpful answers).
        answer: the assistant's answer.

    Returns:
        A reject reason, or None.
    """
    if kind == "harmful" and not is_refusal(answer):
        return "harmful request not refused"
    if kind == "lookalike" and is_refusal(answer):
        return "safe request refused (would teach over-refusal)"
    return None


class SafetyWriter:
    """``process`` of the safety stage."""

    def __init__(self, cfg: ReplayConfig, llm: LazyLLM):
        self.cfg, self.llm = cfg, llm
        self.system = cfg.safety.system_prompt
        self.record = json.dumps(cfg.safety.settings(), sort_keys=True)

    def __call__(self, chunk: list[dict]):
        model, tokenizer = self.llm.get()
        system = [{"role": "system", "content": self.system}] if self.system else []
        prompts = [
            chat_prompt(tokenizer, system + [{"role": "user", "content": x["request"]}]) for x in chunk
        ]
        answers = generate_texts(model, tokenizer, prompts, self.cfg.safety.answer)
        rows, rejects = [], []
        for item, prompt, g in zip(chunk, prompts, answers, strict=True):
            answer, reason = _finish_answer(g.text, g.truncated, self.cfg.safety.answer_on_truncated)
            reason = reason or judge_safety(item["kind"], answer)
            if reason:
                rejects.append({"replay_id": item["replay_id"], "reason": reason})
                continue
            rows.append(
                _row(
                    "safety",
                    item["replay_id"],
                    item["request"],
                    answer,
                    self.cfg.llm,
                    prompt,
                    self.record,
                    item["kind"],
                )
            )
        return StageResult(rows=rows, rejects=rejects)


def build_safety(out_dir, cfg: ReplayConfig, *, shard=(0, 1), llm: LazyLLM | None = None):
    """The safety set in ``out_dir`` (``{data_dir}/replay/safety``): refusals to harmful requests and
    helpful answers to look-alikes."""
    inputs = safety_inputs(cfg.safety)
    fp = {"stage": "replay/safety", "llm": cfg.llm, "dtype": cfg.dtype, "safety": cfg.safety.settings(),
          "requests": [x["request"] for x in inputs]}  # fmt: skip
    ds = run_stage(
        out_dir, fp, inputs, SafetyWriter(cfg, llm or LazyLLM(cfg.llm, cfg.dtype)), key="replay_id",
        chunk_size=16, shard=shard, desc="replay/safety",
    )  # fmt: skip
    if ds is not None:
        kinds = Counter(ds["replay_kind"]) if len(ds) else Counter()
        reasons = Counter(r["reason"] for r in read_rejects(out_dir))
        _write_stats(
            out_dir,
            {
                "source": "safety",
                "asked": len(inputs),
                "rows": len(ds),
                "kept": dict(kinds),
                "skipped": dict(reasons),
            },
        )
    return ds


# ---------------------------------------------------------------------------------------------
# Experience


def _as_messages(row: dict) -> list[dict] | None:
    """Normalise one chat/instruction record to ``[{"role","content"}, ...]`` (None if unusable)."""
    if isinstance(row.get("messages"), list):
        msgs = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in row["messages"]]
    elif isinstance(row.get("conversations"), list):
        roles = {
            "human": "user",
            "user": "user",
            "gpt": "assistant",
            "assistant": "assistant",
            "system": "system",
        }
        msgs = [
            {"role": roles.get(str(m.get("from")), ""), "content": str(m.get("value") or "")}
            for m in row["conversations"]
        ]
    elif row.get("instruction") and row.get("output"):
        user = str(row["instruction"]) + (f"\n\n{row['input']}" if row.get("input") else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": str(row["output"])}]
    else:
        for q, a in (("prompt", "response"), ("question", "answer")):
            if row.get(q) and row.get(a):
                msgs = [
                    {"role": "user", "content": str(row[q])},
                    {"role": "assistant", "content": str(row[a])},
                ]
                break
        else:
            return None
    if not msgs or any(
        m["role"] not in ("system", "user", "assistant") or not m["content"].strip() for m in msgs
    ):
        return None
    if msgs[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in msgs):
        return None
    return msgs


def read_experience(path: str | Path, split: str = "train") -> list[dict]:
    """Read a chat/instruction dataset from disk as plain dicts.

    Args:
        path: an HF ``save_to_disk`` folder (Dataset or DatasetDict) or a ``.jsonl`` file.
        split: the split to take from a DatasetDict.

    Returns:
        The records.

    Raises:
        FileNotFoundError: missing path. ValueError: unreadable file or missing split.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"replay.experience.path={str(path)!r} does not exist")
    if path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{path}: no split {split!r} (has {list(data)})")
            data = data[split]
        return [dict(r) for r in data]
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err})") from None
    return records


def build_experience(out_dir, cfg: ReplayConfig, *, shard=(0, 1), llm: LazyLLM | None = None):
    """An on-disk chat/instruction dataset (``experience.path``, required) sampled into replay chats in
    ``out_dir`` (``{data_dir}/replay/experience``). It writes nothing with an LLM and is one cheap pass, so
    `shard` and `llm` are not used: every shard builds it (the same rows)."""
    e = cfg.experience
    if not e.path:
        raise ValueError(
            "replay.experience.path is not set: point it at a chat dataset folder or a .jsonl file"
        )
    records = read_experience(e.path, e.split)
    picked = sorted(random.Random(e.seed).sample(range(len(records)), min(e.size, len(records))))
    inputs = [
        {"replay_id": f"experience-{i:07d}", "record": json.dumps(records[i], default=str)} for i in picked
    ]
    origin = str(Path(e.path).resolve())

    def process(chunk: list[dict]):
        rows, rejects = [], []
        for item in chunk:
            msgs = _as_messages(json.loads(item["record"]))
            if msgs is None:
                rejects.append(
                    {
                        "replay_id": item["replay_id"],
                        "file": origin,
                        "reason": "not a chat or instruction record",
                    }
                )
                continue
            row = _row("experience", item["replay_id"], "", "", "", "", "{}", origin)
            row["messages"] = msgs
            rows.append(row)
        return StageResult(rows=rows, rejects=rejects)

    fp = {"stage": "replay/experience", "path": origin, "split": e.split, "size": e.size, "seed": e.seed}
    return run_stage(out_dir, fp, inputs, process, key="replay_id", chunk_size=1024, desc="replay/experience")


def _write_stats(out_dir: Path, stats: dict) -> None:
    logger.info("%s: %s", out_dir, json.dumps(stats))
    Path(out_dir, "_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


BUILDERS = {"experience": build_experience, "magpie": build_magpie, "safety": build_safety}


def run_replay(cfg: DictConfig, state: dict | None = None) -> dict[str, Any]:
    """The replay stage of ``data_prep/prepare.py``: build every source in ``replay.build``.

    Args:
        cfg: the prepare config; uses ``replay`` (group ``conf/replay``), ``paths.data_dir`` and ``shard``.
        state: the pipeline state of ``speechllm.data.prepare``, when run from there; the result
            goes to ``state["replay"]``. (Replay folders are shared by all datasets, so they are
            not added to the dataset's rejects.)

    Returns:
        ``{source name: dataset or None (other shards still running)}``.
    """
    rcfg = replay_config(cfg.replay)
    data_dir = Path(cfg.paths.data_dir)
    shard = str(cfg.get("shard", "0/1"))
    llm = LazyLLM(rcfg.llm, rcfg.dtype)  # shared, so magpie and safety load the model once
    out: dict[str, Any] = {}
    for name in rcfg.build:
        out[name] = BUILDERS[name](replay_dir(data_dir, name), rcfg, shard=shard, llm=llm)
    if state is not None:
        state["replay"] = out
    return out
