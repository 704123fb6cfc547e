"""Training targets written by the frozen text LLM (DeSTA2 self-output) and the comparison modes.

The frozen text LLM reads a clip's text description plus an instruction and answers; the answer
becomes the speech model's training target. What it reads (`speechllm.textllm.description_messages`)
and how it generates are the text-LLM module's; this stage chooses instructions, checks and records.

Modes (``target.mode``), all writing the same columns to ``{data_dir}/{data.name}/targets/{mode}/``:
    ``self_output``: the LLM's own answer to (description, instruction) - the DeSTA2 target.
    ``label``: an answer assembled from the gold ``label_*`` columns by templates (human-data baseline).
    ``paraphrase``: the LLM rewrites the label answer in its own words (SDFT-style).

Columns added to each described row: ``instruction``, ``target``, ``target_mode``, ``target_llm``,
``target_prompt`` (the exact text the LLM saw; empty for ``label``), ``target_generation`` (JSON of
the settings), and with token filtering ``target_token_ids`` and ``keep_mask``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from speechllm.attributes import attribute_tasks
from speechllm.config import ConfigError, check_section
from speechllm.data.instructions import (
    LABEL_TRANSCRIPT_TEMPLATE,
    PARAPHRASE_TEMPLATE,
    asked_attributes,
    asks_content,
    label_clauses,
    pick_instructions,
    resolve_pool,
)
from speechllm.data.layout import described_dir, targets_dir
from speechllm.data.stage import StageResult, load_stage, read_rejects, run_stage
from speechllm.data.token_filter import add_keep_masks, masked_fraction
from speechllm.data.verify import VERDICTS, VerifyConfig, correctness, label_classes, verify_answer
from speechllm.textllm import (
    DEFAULT_SYSTEM,
    Generation,
    GenerationConfig,
    LazyLLM,
    chat_prompt,
    description_messages,
    generate_texts,
    generate_vllm,
    load_vllm,
)

logger = logging.getLogger(__name__)

MODES = ("self_output", "label", "paraphrase")


# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class TokenFilterConfig:
    """Token filtering settings (see :mod:`speechllm.data.token_filter`).

    Attributes:
        enabled: store ``target_token_ids`` and ``keep_mask``.
        threshold: keep a token when its probability under the base LLM is >= this.
        batch_size: sequences per scoring forward pass.
    """

    enabled: bool = False
    threshold: float = 0.4
    batch_size: int = 16


@dataclass
class TargetConfig:
    """Schema of the ``target`` config group; an unknown key fails with its name.

    Attributes:
        mode: self_output | label | paraphrase.
        llm: source of the frozen text LLM (unused by ``label`` unless token filtering is on).
        dtype: torch dtype name for the LLM, or None for the checkpoint's.
        backend: hf | vllm.
        split: which described split gets targets (None: all rows).
        limit: keep at most this many clips (the first, by clip_id), or None.
        instructions: instruction pool name or a list of instructions.
        instructions_per_clip: distinct instructions drawn per clip, each giving its own target row.
        system: system prompt for the LLM; None uses DEFAULT_SYSTEM, "" none.
        on_truncated: what to do with an answer that hit max_new_tokens: ``trim`` (cut back to its
            last complete sentence, reject if none), ``drop`` (reject) or ``keep``.
        chunk_size: inputs per resumable part.
        generation: decoding settings.
        token_filter: token filtering settings.
        verify: check answers against the clip's labels and resample wrong ones (`speechllm.data.verify`).
        folder: the folder under ``targets/`` (None: the mode), so that several target sets of one mode
            (verified and not, filtered and not) can sit side by side; where, not what: not part of the
            fingerprint.
    """

    mode: str = "self_output"
    llm: str = "packaged:smollm2-135m-instruct"
    dtype: str | None = None
    backend: str = "hf"
    split: str | None = "train"
    limit: int | None = None
    instructions: Any = "desta2"
    instructions_per_clip: int = 1
    system: str | None = None
    on_truncated: str = "trim"
    chunk_size: int = 192
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(batch_size=192))
    token_filter: TokenFilterConfig = field(default_factory=TokenFilterConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    folder: str | None = None


def target_config(node: DictConfig | dict | None) -> TargetConfig:
    """Validate a ``target`` config node against :class:`TargetConfig`.

    Args:
        node: the ``target`` node (DictConfig or dict); None gives the defaults.

    Returns:
        A TargetConfig.

    Raises:
        ValueError: unknown key, bad mode/backend/on_truncated value, or an invalid pool.
    """
    cfg = check_section(TargetConfig, node, "target.")
    cfg.verify.check()
    if cfg.verify.enabled and cfg.mode == "label":
        raise ConfigError("target.verify needs an LLM's answers; label targets are right by construction")
    if cfg.mode not in MODES:
        raise ConfigError(f"target.mode={cfg.mode!r} is not one of {MODES}")
    if cfg.backend not in ("hf", "vllm"):
        raise ConfigError(f"target.backend={cfg.backend!r}: use hf or vllm")
    if cfg.on_truncated not in ("trim", "drop", "keep"):
        raise ConfigError(f"target.on_truncated={cfg.on_truncated!r}: use trim, drop or keep")
    cfg.generation.check("target.generation")
    if cfg.chunk_size < 1 or cfg.token_filter.batch_size < 1:
        raise ConfigError("target.chunk_size and target.token_filter.batch_size must be >= 1")
    if cfg.folder is not None and (not cfg.folder or "/" in cfg.folder or cfg.folder.startswith(".")):
        raise ConfigError(f"target.folder={cfg.folder!r}: a plain folder name, or null for the mode's")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"target.limit={cfg.limit} must be >= 1, or null for every clip")
    if not 0.0 <= cfg.token_filter.threshold <= 1.0:
        raise ConfigError(
            f"target.token_filter.threshold={cfg.token_filter.threshold} is a probability: use [0, 1]"
        )
    try:
        cfg.instructions = resolve_pool(cfg.instructions)
    except ValueError as err:
        raise ConfigError(f"target.instructions: {err}") from None
    if not 1 <= cfg.instructions_per_clip <= len(set(cfg.instructions)):
        raise ConfigError(
            f"target.instructions_per_clip={cfg.instructions_per_clip} must be between 1 and the pool's "
            f"{len(set(cfg.instructions))} distinct instructions"
        )
    return cfg


# ---------------------------------------------------------------------------------------------
# Answers from labels


def label_answer(row: dict, instruction: str | None = None) -> str | None:
    """The template answer written from a row's gold ``label_*`` columns.

    A question about one attribute ("Is the speaker a man or a woman?") is answered with that
    attribute's clause, and one about the words spoken with the transcript, as a person would answer
    it; any other instruction ("Describe the audio") with every clause the row has labels for.

    Args:
        row: a described row.
        instruction: what the answer responds to (None: every clause).

    Returns:
        The answer text, or None when the row has no usable label for it.
    """
    asked = asked_attributes(instruction) if instruction else []
    content_only = bool(instruction) and not asked and asks_content(instruction)
    parts = []
    text = row.get("label_text")
    if isinstance(text, str) and text.strip() and not asked:
        parts.append(LABEL_TRANSCRIPT_TEMPLATE.format(v=text.strip()))
    for name, template in label_clauses().items():
        if content_only or (asked and name not in asked):
            continue
        value = row.get(f"label_{name}")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        parts.append(template.format(v=str(value).strip().replace("_", " ")))
    return " ".join(parts) if parts else None


def paraphrase_messages(row: dict, instruction: str, system: str | None = "") -> list[dict] | None:
    """The chat in which the LLM rewrites the row's templated gold answer in its own words (`paraphrase`
    targets, and verification's paraphrase fallback); None when no label answers the instruction.

    Args:
        row: a described row.
        instruction: the instruction the answer responds to.
        system: system prompt ("" or None: no system turn; the rewrite needs no listening persona).
    """
    answer = label_answer(row, instruction)
    if answer is None:
        return None
    content = PARAPHRASE_TEMPLATE.format(instruction=instruction, answer=answer)
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}
    ]


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut text back to the end of its last complete sentence ("" if it has none).

    Args:
        text: possibly truncated text.

    Returns:
        The text up to and including the last ``.``, ``!`` or ``?`` (with closing quotes/brackets).
    """
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


# ---------------------------------------------------------------------------------------------
# The stage


class TargetWriter:
    """Turns chunks of described rows into target rows (the ``process`` of the targets stage).

    The LLM is loaded lazily, once, on the first chunk that needs it, so a fully finished (skipped)
    stage loads nothing.

    Args:
        cfg: validated target config.
        seed: instruction-sampling seed.
        model, tokenizer: an already loaded LLM (tests, benchmarks); loaded from ``cfg.llm`` if None.
    """

    def __init__(self, cfg: TargetConfig, seed: int = 0, model=None, tokenizer=None,
                 classes: dict[str, tuple[str, ...]] | None = None):  # fmt: skip
        self.cfg = cfg
        self.seed = seed
        self.llm = LazyLLM(cfg.llm, cfg.dtype, model, tokenizer)
        self.vllm = None
        # Label classes of the whole dataset (a chunk may not hold every class); used by verification.
        self.classes = classes or {}

    def _llm(self):
        return self.llm.get()

    def generation_record(self) -> str:
        """The JSON string stored in ``target_generation``."""
        record: dict[str, Any] = {"mode": self.cfg.mode, "instructions_seed": self.seed}
        if self.cfg.mode != "label":
            record.update(
                backend=self.cfg.backend,
                system=DEFAULT_SYSTEM if self.cfg.system is None else self.cfg.system,
                on_truncated=self.cfg.on_truncated,
                **self.cfg.generation.settings(),
            )
        if self.cfg.mode == "paraphrase":
            record["template"] = PARAPHRASE_TEMPLATE
        if self.cfg.token_filter.enabled:
            record["token_filter_threshold"] = self.cfg.token_filter.threshold
        if self.cfg.verify.enabled:
            record["verify"] = dataclasses.asdict(self.cfg.verify)
        return json.dumps(record, sort_keys=True)

    def messages_for(self, row: dict, instruction: str) -> list[dict] | None:
        """What the LLM reads for this row in this mode (None for label mode or no usable input)."""
        if self.cfg.mode == "self_output":
            return description_messages(row["description"], instruction, self.cfg.system)
        if self.cfg.mode == "paraphrase":
            return paraphrase_messages(row, instruction, self.cfg.system)
        return None

    def __call__(self, chunk: list[dict]):
        rows, rejects, pending = [], [], []
        record = self.generation_record()
        for row in chunk:
            key = {"target_id": row["target_id"], "clip_id": row["clip_id"], "file": row.get("audio_path")}
            description = row.get("description")
            if not isinstance(description, str) or not description.strip():
                rejects.append({**key, "reason": "empty description"})
                continue
            instruction = row["instruction"]
            out = {
                **row,
                "target_mode": self.cfg.mode,
                "target_generation": record,
            }
            if self.cfg.mode == "label":
                answer = label_answer(row, instruction)
                if answer is None:
                    rejects.append({**key, "reason": "no label_* column answers the instruction"})
                    continue
                rows.append({**out, "target": answer, "target_llm": "", "target_prompt": ""})
                continue
            messages = self.messages_for(row, instruction)
            if messages is None:
                rejects.append({**key, "reason": "no label_* columns to paraphrase"})
                continue
            pending.append((out, key, messages))

        if pending:
            rows.extend(self._generate(pending, rejects))
        if self.cfg.token_filter.enabled and rows:
            model, tokenizer = self._llm()
            add_keep_masks(
                rows,
                model,
                tokenizer,
                threshold=self.cfg.token_filter.threshold,
                system=self.cfg.system,
                batch_size=self.cfg.token_filter.batch_size,
            )
        return StageResult(rows=rows, rejects=rejects)

    def _run_llm(
        self, messages: list[list[dict]], gen: GenerationConfig, salt: str
    ) -> tuple[list[str], list]:
        """(prompts, generations) for chats, on the configured backend."""
        if self.cfg.backend == "vllm":
            if self.vllm is None:  # one engine for the whole stage, not one per chunk
                self.vllm = load_vllm(self.cfg.llm, self.cfg.generation.seed, self.cfg.dtype)
            prompts = [chat_prompt(self.vllm.get_tokenizer(), m) for m in messages]
            return prompts, generate_vllm(self.vllm, prompts, gen)
        model, tokenizer = self._llm()
        prompts = [chat_prompt(tokenizer, m) for m in messages]
        return prompts, generate_texts(model, tokenizer, prompts, gen, salt=salt)

    def _finish(self, g: Generation) -> tuple[str, str | None]:
        """(answer text, None) or ("", why it is unusable), applying `on_truncated`."""
        if g.truncated and self.cfg.on_truncated == "drop":
            return "", f"answer hit max_new_tokens={self.cfg.generation.max_new_tokens}"
        text = trim_to_sentence(g.text) if g.truncated and self.cfg.on_truncated == "trim" else g.text
        if not text:
            return "", "no complete sentence within max_new_tokens" if g.truncated else "empty answer"
        return text, None

    def _generate(self, pending: list[tuple[dict, dict, list[dict]]], rejects: list[dict]) -> list[dict]:
        salt = str(pending[0][1]["target_id"])
        prompts, gens = self._run_llm([m for _, _, m in pending], self.cfg.generation, salt)
        answers = [self._finish(g) for g in gens]
        verdicts: list[dict | None] = [None] * len(pending)
        if self.cfg.verify.enabled:
            answers, verdicts = self._verify(pending, answers, salt)
            if self.cfg.verify.fallback == "paraphrase":
                prompts, answers = self._paraphrase_failed(pending, prompts, answers, verdicts, salt)
        rows = []
        for (out, key, _), prompt, (text, why), verdict in zip(
            pending, prompts, answers, verdicts, strict=True
        ):
            if verdict is not None and verdict["verdict"] == "wrong" and self.cfg.verify.fallback != "keep":
                failed = ", ".join(verdict["failed"])
                rejects.append(
                    {
                        **key,
                        "reason": f"verify: {failed} wrong or unstated in {verdict['tries'] + 1} answers",
                        "first": verdict["first"],
                    }
                )
                continue
            if why is not None:
                rejects.append({**key, "reason": why})
                continue
            extra = (
                {"target_verification": json.dumps(verdict, sort_keys=True)} if verdict is not None else {}
            )
            rows.append({**out, "target": text, "target_llm": self.cfg.llm, "target_prompt": prompt, **extra})
        return rows

    def _paraphrase_failed(self, pending, prompts: list[str], answers, verdicts: list[dict], salt: str):
        """`fallback: paraphrase`: the LLM rewrites the templated gold answer of each row that failed
        verification; a rewrite that passes replaces the answer (its verdict records the fallback)."""
        chats, rows = [], []
        for i, verdict in enumerate(verdicts):
            out = pending[i][0]
            messages = paraphrase_messages(out, out["instruction"]) if verdict["verdict"] == "wrong" else None
            if messages is not None:
                chats.append(messages)
                rows.append(i)
        if not rows:
            return prompts, answers
        new_prompts, gens = self._run_llm(chats, self.cfg.generation, f"{salt}/paraphrase")
        prompts, answers = list(prompts), list(answers)
        for i, prompt, g in zip(rows, new_prompts, gens, strict=True):
            text, why = self._finish(g)
            out = pending[i][0]
            judged = verify_answer(text, out, out["instruction"], self.classes) if text else None
            verdicts[i]["fallback"] = "paraphrase"
            if why is None and judged is not None and judged.verdict != "wrong":
                prompts[i], answers[i] = prompt, (text, None)
                verdicts[i].update(verdict=judged.verdict, failed=judged.failed, checked=judged.checked)
        return prompts, answers

    def _verify(self, pending, answers: list[tuple[str, str | None]], salt: str):
        """Judge each answer; resample the failing ones up to `verify.tries` times (see `data.verify`)."""
        v = self.cfg.verify

        def judge(i: int, text: str):
            out, _, _ = pending[i]
            return verify_answer(text, out, out["instruction"], self.classes) if text else None

        first = [judge(i, t) for i, (t, _) in enumerate(answers)]
        final = list(first)
        tries = [0] * len(pending)
        answers = list(answers)
        sampled = dataclasses.replace(
            self.cfg.generation, do_sample=True, temperature=v.temperature, top_p=v.top_p
        )
        for attempt in range(1, v.tries + 1):
            failing = [i for i, f in enumerate(final) if f is None or f.verdict == "wrong"]
            if not failing:
                break
            _, gens = self._run_llm([pending[i][2] for i in failing], sampled, f"{salt}/verify-{attempt}")
            for i, g in zip(failing, gens, strict=True):
                tries[i] = attempt
                text, why = self._finish(g)
                verdict = judge(i, text)
                if verdict is not None and verdict.verdict != "wrong":
                    answers[i], final[i] = (text, why), verdict
                elif answers[i][1] is not None and why is None:  # a usable (if wrong) answer beats none
                    answers[i], final[i] = (text, why), verdict
        # A row with no usable answer at all is rejected for that reason (its verdict says "answer").
        records = [
            {
                "verdict": f.verdict if f else "wrong",
                "failed": f.failed if f else ["answer"],
                "checked": f.checked if f else {},
                "tries": n,
                "first": f0.checked if f0 else {},
            }
            for f0, f, n in zip(first, final, tries, strict=True)
        ]
        return answers, records


def _described_inputs(described, cfg: TargetConfig, seed: int) -> list[dict]:
    """One input per (clip, instruction): `target_id` is `<clip_id>/<i>` for the clip's i-th instruction."""
    rows = [dict(r) for r in described]
    if cfg.split is not None:
        rows = [r for r in rows if r.get("split") == cfg.split]
    rows.sort(key=lambda r: str(r["clip_id"]))
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    pool = _answerable(cfg.instructions, rows)
    if (distinct := len(set(pool))) < cfg.instructions_per_clip:
        raise ConfigError(
            f"target.instructions_per_clip={cfg.instructions_per_clip}: only {distinct} instructions of the pool "
            "ask about attributes these clips were described with"
        )
    return [
        {**r, "target_id": f"{r['clip_id']}/{i}", "instruction": instruction}
        for r in rows
        for i, instruction in enumerate(pick_instructions(pool, str(r["clip_id"]), seed, cfg.instructions_per_clip))
    ]


def _answerable(pool: list[str], rows: list[dict]) -> list[str]:
    """The pool without the questions about an attribute no clip has a value or a label for: the `attributes`
    pool asks about every registered attribute, and a dataset described with a few of them (a user's own
    attribute alone, say) would otherwise get targets in which the LLM guesses at what its description
    never said. Dropped questions are logged."""
    tasks = attribute_tasks()
    described = {name for name, task in tasks.items() if any(r.get(task.attribute) or r.get(f"label_{name}") for r in rows)}
    asked = {q: set(asked_attributes(q)) for q in pool}
    kept = [q for q in pool if asked[q] <= described]
    if len(kept) < len(pool):
        missing = sorted(set().union(*asked.values()) - described)
        logger.info("targets: %d of %d instructions left out: they ask about %s, which no clip was described with",
                    len(pool) - len(kept), len(pool), missing)  # fmt: skip
    return kept


def targets_fingerprint(cfg: TargetConfig, seed: int) -> dict:
    """What a targets stage's rows depend on (batch sizes do not), as recorded in its `_complete.json`;
    training compares its own `target` settings with it (`speechllm.data.prepared.check_prepared`)."""
    config = dataclasses.asdict(cfg)
    config["generation"].pop("batch_size")
    config["token_filter"].pop("batch_size")
    config.pop("folder")
    return {"stage": "targets", "target": config, "seed": seed}


def build_targets(
    described,
    out_dir: str | Path,
    cfg: TargetConfig,
    *,
    seed: int = 0,
    shard: str | tuple[int, int] = (0, 1),
    model=None,
    tokenizer=None,
):
    """Run the (resumable, shardable) targets stage over described rows.

    Args:
        described: described rows (a ``datasets.Dataset`` or a list of dicts with ``clip_id``,
            ``description``, ``split``, ``label_*``...).
        out_dir: the stage folder.
        cfg: validated target config.
        seed: instruction-sampling seed.
        shard: ``"i/n"`` or ``(i, n)``.
        model, tokenizer: a loaded LLM to use instead of loading ``cfg.llm``.

    Returns:
        The targets dataset, or None when other shards are still running.
    """
    inputs = _described_inputs(described, cfg, seed)
    classes = label_classes([dict(r) for r in described]) if cfg.verify.enabled else {}
    fingerprint = targets_fingerprint(cfg, seed)
    writer = TargetWriter(cfg, seed=seed, model=model, tokenizer=tokenizer, classes=classes)
    result = run_stage(
        out_dir,
        fingerprint,
        inputs,
        writer,
        key="target_id",
        chunk_size=cfg.chunk_size,
        shard=shard,
        desc=f"targets/{cfg.mode}",
    )
    if result is not None:
        write_stats(out_dir, result, cfg)
    return result


def write_stats(out_dir: str | Path, dataset, cfg: TargetConfig) -> dict:
    """Write ``_stats.json`` (rows, target length, masked fraction) next to the targets and log it.

    Args:
        out_dir: the targets folder.
        dataset: the finished targets dataset.
        cfg: the target config it was made with.

    Returns:
        The stats dict.
    """
    stats: dict[str, Any] = {"mode": cfg.mode, "rows": len(dataset), "rejects": len(read_rejects(out_dir))}
    if len(dataset):
        words = [len(t.split()) for t in dataset["target"]]
        stats["mean_target_words"] = round(sum(words) / len(words), 2)
    if "target_verification" in dataset.column_names:
        records = [json.loads(v) for v in dataset["target_verification"]]
        # Greedy answers of every verified input: the kept rows and those verification dropped.
        dropped = [r for r in read_rejects(out_dir) if "first" in r]
        first = [{"checked": r["first"]} for r in records + dropped]
        stats["verify"] = {
            "verdicts": {k: sum(r["verdict"] == k for r in records) for k in VERDICTS},
            "resampled": sum(
                r["tries"] > 0 and r["checked"] != r["first"] and "fallback" not in r for r in records
            ),
            "paraphrased": sum(r.get("fallback") == "paraphrase" for r in records),
            "greedy_correctness": correctness(first),
            "kept_correctness": correctness(records),
        }
        for name, before in stats["verify"]["greedy_correctness"].items():
            after = stats["verify"]["kept_correctness"].get(name, {"rate": float("nan"), "judged": 0})
            logger.info("targets/%s verify: %s right in %.0f%% of %d greedy answers -> %.0f%% of %d kept targets",
                        cfg.mode, name, 100 * before["rate"], before["judged"], 100 * after["rate"],
                        after["judged"])  # fmt: skip
    if "keep_mask" in dataset.column_names:
        stats["token_filter_threshold"] = cfg.token_filter.threshold
        stats.update(masked_fraction(dataset["keep_mask"]))
        logger.info(
            "targets/%s: %.1f%% of %d target tokens masked (p < %.2f)",
            cfg.mode,
            100 * stats["masked_fraction"],
            stats["tokens"],
            cfg.token_filter.threshold,
        )
    Path(out_dir, "_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def run_targets(cfg: DictConfig, state: dict | None = None) -> Any:
    """The targets stage of ``data_prep/prepare.py``.

    Reads ``{paths.data_dir}/{data.name}/described`` and writes
    ``{paths.data_dir}/{data.name}/targets/{target.folder or target.mode}``.

    Args:
        cfg: the prepare config; uses ``target`` (group ``conf/target``), ``paths.data_dir``,
            ``data.name``, ``seed`` and ``shard`` (``i/n``).
        state: the pipeline state of ``speechllm.data.prepare``, when run from there: a
            ``described`` of None (describe shards still running) skips the stage; the result goes
            to ``state["targets"]`` and the folder to ``state["targets_dir"]``.

    Returns:
        The targets dataset, or None when this or an earlier stage waits for other shards.
    """
    tcfg = target_config(cfg.target)
    data_dir = Path(cfg.paths.data_dir)
    out_dir = targets_dir(data_dir, cfg.data.name, tcfg.mode, tcfg.folder)
    if state is not None and "described" in state and state["described"] is None:
        logger.info("targets: waiting for the other describe shards; rerun when they are done")
        return None
    described = load_stage(described_dir(data_dir, cfg.data.name))
    result = build_targets(
        described, out_dir, tcfg, seed=int(cfg.get("seed", 0)), shard=str(cfg.get("shard", "0/1"))
    )
    if state is not None:
        state["targets"], state["targets_dir"] = result, out_dir
    return result
