"""`transformers.Trainer` adapted to SpeechLM: its checkpoint format, its collator, and the kd, opd and grpo
losses (the last two sample from the model at every step: speechllm.train.onpolicy).

SpeechLM is a plain `nn.Module` with its own `save_pretrained`, so Trainer's model saving and loading
are replaced: every checkpoint is a SpeechLM folder (`checkpoints/step-N/`, reloadable by
`SpeechLM.from_pretrained` and `python -m speechllm.ask`), and Trainer's own state (optimizer,
scheduler, RNG, data position in `trainer_state.json`) is written beside the model files, so a resumed
run continues with the same optimiser state and data order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import rotate_checkpoints

from speechllm.textllm import description_messages
from speechllm.train.losses import IGNORE_INDEX, kd_loss, token_kl
from speechllm.train.onpolicy import (
    GRPOConfig,
    OPDConfig,
    answer_outcome,
    checkable_task,
    group_advantages,
    grpo_loss,
    reverse_kl,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step"
# Written last into a checkpoint folder, so its presence means the folder is complete.
TRAINER_STATE = "trainer_state.json"


def step_checkpoints(folder: str | Path) -> list[Path]:
    """Complete `step-N` checkpoint folders in `folder`, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}-(\d+)", p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


class TrainCollator:
    """Rows -> batch: looks up cached encoder features, and adds the teacher batch for `kd`.

    Args:
        collate: the model's collator (`SpeechLM.collator()`).
        feature_cache: a FeatureCache whose features replace the speech rows' audio, or None.
        teacher: build `teacher` (the description prompts of the speech rows) for the kd loss.
        system: system prompt of the description chat (as in target generation; None: its default).
        align: an `AlignmentTargets`: add `align_ids` for the speech rows' `align_text` (None: off).
        on_policy: hand the rows themselves to the loss (`{"rows": [...]}`, cached features looked up), which
            samples their targets and then builds the batch with :meth:`batch` (`opd`, `grpo`).
    """

    def __init__(self, collate, feature_cache=None, teacher: bool = False, system: str | None = None,
                 align=None, on_policy: bool = False):  # fmt: skip
        self.collate = collate
        self.feature_cache = feature_cache
        self.teacher = teacher
        self.system = system
        self.align = align
        self.on_policy = on_policy

    def __call__(self, rows: list[dict]) -> dict:
        rows = [dict(r) for r in rows]
        for r in rows:
            if r.get("kind") == "speech" and self.feature_cache is not None:
                r["encoder_features"] = self.feature_cache.get(r["clip_id"], r["audio_path"])
        return {"rows": rows} if self.on_policy else self.batch(rows)

    def batch(self, rows: list[dict]) -> dict:
        """The training batch of rows whose targets are set (and features looked up)."""
        rows = [dict(r) for r in rows]
        for r in rows:
            if self.teacher:
                r["keep_mask"] = None  # kd pairs every target token with the teacher's (see losses.py)
        batch = self.collate(rows)
        if self.align is not None and bool(batch["audio_mask"].any()):
            # Adapter outputs come in the order of the rows with audio; so do their slot counts.
            with_audio = batch["audio_mask"].any(1)
            texts = [r.get("align_text") for r, a in zip(rows, with_audio.tolist(), strict=True) if a]
            batch["align_ids"] = self.align(texts, batch["audio_mask"][with_audio].sum(1).tolist())
        if self.teacher:
            index = [i for i, r in enumerate(rows) if r.get("kind") == "speech"]
            if index:
                teacher_rows = [
                    {
                        "messages": description_messages(
                            rows[i]["description"], rows[i]["instruction"], self.system
                        )
                        + ([] if rows[i].get("target_ids") else [{"role": "assistant", "content": rows[i]["target"]}]),
                        "target_ids": rows[i].get("target_ids"),  # a sampled answer: the same tokens (opd)
                    }
                    for i in index
                ]
                t = self.collate(teacher_rows)
                batch["teacher"] = {k: t[k] for k in ("input_ids", "attention_mask", "labels")}
            batch["teacher_rows"] = torch.tensor(index, dtype=torch.long)
        return batch


class SpeechTensorBoardCallback(TensorBoardCallback):
    """TensorBoard logging into the run's own folder, with SpeechLM's plain-dict `model_config` logged as
    JSON text (the stock callback logs only a `PretrainedConfig`).

    Args:
        log_dir: where the event files go (the run's `tensorboard/` folder, not the checkpoints').
    """

    def __init__(self, log_dir: str | None = None):
        super().__init__()
        if log_dir is not None:
            self.logging_dir = log_dir

    def on_train_begin(self, args, state, control, **kwargs):
        model = kwargs.pop("model", None)
        super().on_train_begin(args, state, control, **kwargs)
        if (
            self.tb_writer is not None
            and model is not None
            and isinstance(getattr(model, "model_config", None), dict)
        ):
            self.tb_writer.add_text("model_config", json.dumps(model.model_config, indent=2, default=str))


class MetricsCallback(TrainerCallback):
    """Keeps the run's metric files current on the main process.

    Args:
        write: `write(state, plot)`; called with plot=False after each log (the JSON is cheap) and
            plot=True at each checkpoint and at the end (drawing the PNG takes most of a second).
    """

    def __init__(self, write):
        self.write = write

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(state, plot=False)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(state, plot=True)


class ProbeCallback(TrainerCallback):
    """Runs the listening probe (`speechllm.eval.probe`) before training and every `every` steps.

    Each result is logged through the trainer (`probe/<task>` in TensorBoard and the log history) and
    handed to `write(history)`, which keeps the run's learning-curve files current.

    Args:
        probe: a `ClassProbe`.
        every: steps between probes.
        audio: row -> its audio fields for the probe (cached encoder features).
        write: called with the whole history after each probe (main process only).
    """

    def __init__(self, probe, every: int, audio, write):
        self.probe = probe
        self.every = every
        self.audio = audio
        self.write = write
        self.trainer: Trainer | None = None
        self.history: list[dict] = []

    def _run(self, state, control, model) -> None:
        if any(h["step"] == state.global_step for h in self.history):
            return
        speechlm = self.trainer.accelerator.unwrap_model(model) if self.trainer is not None else model
        result = self.probe(speechlm, self.audio)
        entry = {"step": state.global_step, **{t: s["balanced_accuracy"] for t, s in result.scores.items()},
                 "predicted": {t: s["predicted"] for t, s in result.scores.items()}}  # fmt: skip
        self.history.append(entry)
        logger.info("probe at step %d: %s", state.global_step,
                    ", ".join(f"{t} {s['balanced_accuracy']:.2f}" for t, s in result.scores.items()))  # fmt: skip
        if self.trainer is not None:
            # Trainer.log clears should_log; the step's own loss log must still happen after us.
            should_log = control.should_log
            self.trainer.log(result.flat())
            control.should_log = should_log
        if state.is_world_process_zero:
            self.write(self.history)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._run(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._run(state, control, model)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Trainer's length-grouped order, with each epoch after the first drawn from (seed, epoch).

    transformers builds its LengthGroupedSampler without a generator, so an epoch's order comes from the
    global RNG as the epoch starts; a run resumed inside epoch 2 or later starts from another RNG state
    and meets other batches (some rows twice, others never). The first epoch keeps the global-RNG order:
    a run resumed inside it already meets the same batches, and one-epoch runs (the demo's) keep theirs.

    Args:
        batch_size, lengths: as for `LengthGroupedSampler`.
        seed: the data-order seed (`TrainingArguments.data_seed`).
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        """Called by Trainer (through accelerate's data loader) before each epoch, resumed ones too."""
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch) if epoch > 0 else None


class SpeechTrainer(Trainer):
    """Trainer for SpeechLM.

    Args:
        *args, **kwargs: as for `transformers.Trainer`.
        loss_type: "ce" (the model's own cross-entropy), "kd", "opd" or "grpo".
        kd_temperature: softmax temperature for kd.
        kd_ce_weight: weight of cross-entropy added to the kd loss on distilled tokens.
        align_weight: weight of the alignment loss added to the training loss.
        adapter_learning_rate: the adapter's peak learning rate (None: the run's `learning_rate`); the
            schedule scales it as it scales the rest.
        opd: settings of `opd` (its data collator has `on_policy` and `teacher` on).
        grpo: settings of `grpo` (its data collator has `on_policy` on).
        label_classes: attribute -> its classes (`speechllm.data.verify.label_classes`), for grpo's rewards.
    """

    def __init__(self, *args, loss_type: str = "ce", kd_temperature: float = 1.0, kd_ce_weight: float = 0.0,
                 align_weight: float = 0.0, adapter_learning_rate: float | None = None,
                 opd: OPDConfig | None = None, grpo: GRPOConfig | None = None,
                 label_classes: dict[str, tuple[str, ...]] | None = None, **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.adapter_learning_rate = adapter_learning_rate
        self.loss_type = loss_type
        self.kd_temperature = kd_temperature
        self.kd_ce_weight = kd_ce_weight
        self.align_weight = align_weight
        self.opd = opd or OPDConfig()
        self.grpo = grpo or GRPOConfig()
        self.label_classes = label_classes or {}
        # Logged beside the loss, averaged over the steps since the last log (align_loss, reward, kl, ...).
        self._step_logs: dict[str, list[float]] = defaultdict(list)
        # SpeechLM's loss is a mean over labelled tokens; Trainer then averages over accumulation steps.
        self.model_accepts_loss_kwargs = False

    def parallelism(self) -> str:
        """How the run is spread over processes, in words (logged at the start of training)."""
        processes = self.args.world_size
        if self.is_deepspeed_enabled:
            stage = self.accelerator.state.deepspeed_plugin.zero_stage
            return f"DeepSpeed ZeRO-{stage} over {processes} processes"
        if self.is_fsdp_enabled:
            return f"FSDP{self.accelerator.state.fsdp_plugin.fsdp_version} over {processes} processes"
        return f"DDP over {processes} processes" if processes > 1 else "one process"

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    # ---- optimiser: the adapter may have a learning rate of its own ----

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.adapter_learning_rate is None:
            return optimizer
        adapter = {id(p) for p in self.accelerator.unwrap_model(model or self.model).adapter.parameters()}
        # Before the first step (no optimiser state yet): move the adapter's parameters into groups of their
        # own; the scheduler, built after this, scales every group's learning rate alike.
        split = []
        for group in optimizer.param_groups:
            mine = [p for p in group["params"] if id(p) in adapter]
            group["params"] = [p for p in group["params"] if id(p) not in adapter]
            if mine:
                split.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine,
                              "lr": self.adapter_learning_rate})  # fmt: skip
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        for group in split:
            optimizer.add_param_group(group)
        return optimizer

    # ---- loss ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_type == "opd":
            return self._opd_loss(model, inputs["rows"], return_outputs)
        if self.loss_type == "grpo":
            return self._grpo_loss(model, inputs["rows"], return_outputs)
        teacher = inputs.pop("teacher", None)
        teacher_rows = inputs.pop("teacher_rows", None)
        if self.loss_type == "ce":
            outputs = model(**inputs, labelled_logits_only=True)
            loss = self._with_alignment(outputs.loss, outputs)
            return (loss, outputs) if return_outputs else loss
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        if teacher is None:
            # No speech row in this batch: plain cross-entropy on the replay rows.
            teacher_logits = outputs.logits.new_zeros((0, 1, outputs.logits.shape[-1]))
            teacher_labels = labels.new_zeros((0, 1))
            teacher_rows = labels.new_zeros((0,))
        else:
            teacher_logits = self._teacher_logits(teacher)
            teacher_labels = teacher["labels"]
        loss, parts = kd_loss(
            outputs.logits, labels.to(outputs.logits.device), teacher_rows.to(outputs.logits.device),
            teacher_logits, teacher_labels.to(outputs.logits.device),
            temperature=self.kd_temperature, ce_weight=self.kd_ce_weight,
        )  # fmt: skip
        outputs.loss = loss = self._with_alignment(loss, outputs)
        return (loss, outputs) if return_outputs else loss

    def _with_alignment(self, loss: torch.Tensor, outputs) -> torch.Tensor:
        align = outputs.get("align_loss")  # present when the collator added align_ids (align.weight > 0)
        if align is None:
            return loss
        self._step_logs["align_loss"].append(float(align.detach()))
        return loss + self.align_weight * align

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            for key, values in self._step_logs.items():
                if values:
                    logs[key] = round(sum(values) / len(values), 5)
            self._step_logs.clear()
        super().log(logs, *args, **kwargs)

    # ---- on-policy losses (speechllm.train.onpolicy) ----

    def _sample(self, speechlm, rows: list[dict], max_new_tokens: int, temperature: float) -> list[dict]:
        """The rows with one answer each sampled from the model's own distribution (no top-k or top-p cut, so
        the answers are the policy's), as `target_ids`."""
        if not rows:
            return []
        prompts = [{k: v for k, v in r.items() if k not in ("target", "keep_mask")} for r in rows]
        sampled = speechlm.generate(prompts, max_new_tokens=max_new_tokens, return_ids=True, do_sample=True,
                                    temperature=temperature, top_k=0, top_p=1.0)  # fmt: skip
        return [{**r, "target_ids": ids, "keep_mask": None} for r, ids in zip(rows, sampled, strict=True)]

    def _labelled_logprobs(self, model, batch: dict):
        """Per labelled position, row-major: (logits, log-probability of the label, the position's row)."""
        inputs = {k: v for k, v in batch.items() if k not in ("teacher", "teacher_rows")}
        out = model(**inputs, labelled_logits_only=True)
        labels = batch["labels"][:, 1:].to(out.labelled_logits.device)
        where = labels != IGNORE_INDEX
        logp = torch.log_softmax(out.labelled_logits, -1).gather(-1, labels[where][:, None]).squeeze(1)
        return out, logp, where.nonzero()[:, 0]

    def _opd_loss(self, model, rows: list[dict], return_outputs: bool):
        speechlm = self.accelerator.unwrap_model(model)
        speech = [i for i, r in enumerate(rows) if r.get("kind") == "speech"]
        sampled = self._sample(speechlm, [rows[i] for i in speech], self.opd.max_new_tokens, self.opd.temperature)
        rows = list(rows)
        for i, row in zip(speech, sampled, strict=True):
            rows[i] = row
        batch = self.data_collator.batch(rows)
        out, logp, row_of = self._labelled_logprobs(model, batch)
        distilled = torch.isin(row_of, torch.tensor(speech, device=row_of.device, dtype=row_of.dtype))
        kl_sum = logp.new_zeros(())
        if speech:
            t_sel = self._teacher_labelled_logits(batch["teacher"])
            if t_sel.shape[0] != int(distilled.sum()):
                raise ValueError(f"opd: the sampled answers label {int(distilled.sum())} tokens for the student "
                                 f"but {t_sel.shape[0]} for the teacher; turn token filtering off")  # fmt: skip
            kl_sum = reverse_kl(out.labelled_logits[distilled], t_sel).sum()
            self._step_logs["kl_to_teacher"].append(float(kl_sum.detach()) / max(int(distilled.sum()), 1))
        loss = (kl_sum - logp[~distilled].sum()) / max(logp.numel(), 1)
        out.loss = loss = self._with_alignment(loss, out)
        return (loss, out) if return_outputs else loss

    def _grpo_loss(self, model, rows: list[dict], return_outputs: bool):
        speechlm = self.accelerator.unwrap_model(model)
        cfg = self.grpo
        asked = [(i, t) for i, r in enumerate(rows) if (t := checkable_task(r, self.label_classes))]
        sampled = self._sample(speechlm, [rows[i] for i, _ in asked for _ in range(cfg.group_size)],
                               cfg.max_new_tokens, cfg.temperature)  # fmt: skip
        tasks = [t for _, t in asked for _ in range(cfg.group_size)]
        answers = speechlm.tokenizer.batch_decode([r["target_ids"] for r in sampled], skip_special_tokens=True)
        outcomes = [
            answer_outcome(a.strip(), json.loads(r["clip_labels"]), t, self.label_classes[t])
            for a, r, t in zip(answers, sampled, tasks, strict=True)
        ]
        rewards = torch.tensor([cfg.rewards[o] for o in outcomes], dtype=torch.float32)
        others = [r for i, r in enumerate(rows) if i not in {j for j, _ in asked}]
        batch = self.data_collator.batch(sampled + others)
        out, logp, row_of = self._labelled_logprobs(model, batch)
        on_policy = row_of < len(sampled)
        pg_sum = logp.new_zeros(())
        if sampled:
            advantages = group_advantages(rewards.view(-1, cfg.group_size)).flatten().to(logp.device)
            ref_logp = None
            if cfg.kl_weight:
                with torch.no_grad(), self._reference(speechlm):
                    _, ref_logp, _ = self._labelled_logprobs(model, batch)
                ref_logp = ref_logp[on_policy]
            pg_sum, parts = grpo_loss(logp[on_policy], ref_logp, advantages[row_of[on_policy]], cfg.kl_weight)
            self._step_logs["reward"].append(float(rewards.mean()))
            self._step_logs["kl_to_reference"].append(parts["kl"] / max(int(on_policy.sum()), 1))
            for outcome in ("right", "silent", "hedging"):
                self._step_logs[f"answers_{outcome}"].append(outcomes.count(outcome) / len(outcomes))
        loss = (pg_sum - logp[~on_policy].sum()) / max(logp.numel(), 1)
        out.loss = loss = self._with_alignment(loss, out)
        return (loss, out) if return_outputs else loss

    @torch.no_grad()
    def task_kl(self, rows: list[dict], collate: TrainCollator, batch_size: int = 8) -> dict:
        """Forgetting where RL's Razor (arXiv 2509.04259) says it shows: KL(base || trained) per answer token
        on the task's own prompts. The base is the LLM without its LoRA reading the clip's description, the
        trained model hears the audio; both score the row's target tokens.

        Args:
            rows: speech rows with their targets.
            collate: a collator with `teacher` on (it builds the description prompts).
            batch_size: rows per forward pass.

        Returns:
            {"mean": mean over rows of each row's mean per-token KL, "se": its standard error across rows,
            "rows", "tokens"}.
        """
        speechlm = self.accelerator.unwrap_model(self.model)
        was_training = speechlm.training
        speechlm.eval()
        per_row, tokens = [], 0
        try:
            for start in range(0, len(rows), batch_size):
                batch = collate(rows[start : start + batch_size])
                out, _, row_of = self._labelled_logprobs(speechlm, batch)
                kl = token_kl(self._teacher_labelled_logits(batch["teacher"]), out.labelled_logits)
                per_row += [float(kl[row_of == j].mean()) for j in range(len(batch["input_ids"]))]
                tokens += kl.numel()
        finally:
            speechlm.train(was_training)
        values = torch.tensor(per_row, dtype=torch.float64)
        se = float(values.std() / len(values) ** 0.5) if len(values) > 1 else None
        return {"mean": float(values.mean()), "se": se, "rows": len(per_row), "tokens": tokens}

    @contextlib.contextmanager
    def _reference(self, speechlm):
        """The reference policy: the model with its LoRA switched off (the base LLM reading the adapter)."""
        llm = speechlm.llm
        if not hasattr(llm, "disable_adapter"):
            raise ValueError("grpo.kl_weight > 0 needs a reference policy: use model.llm.finetune=lora")
        with llm.disable_adapter():
            yield

    def _teacher_labelled_logits(self, teacher: dict) -> torch.Tensor:
        """The teacher's logits where a next token is labelled, row-major (paired one to one with the student's
        `labelled_logits` of the same rows). Shapes: -> (labelled positions, vocab)."""
        logits = self._teacher_logits(teacher)
        labels = teacher["labels"][:, 1:].to(logits.device)
        return logits[:, :-1][labels != IGNORE_INDEX]

    @torch.no_grad()
    def _teacher_logits(self, teacher: dict) -> torch.Tensor:
        """The frozen text LLM's logits on the description prompts (LoRA switched off when present).

        Shapes: teacher input_ids (k, tseq) -> (k, tseq, vocab).
        """
        speechlm = self.accelerator.unwrap_model(self.model)
        llm = speechlm.llm
        if speechlm.finetune == "full":
            raise ValueError(
                "loss=kd needs the original LLM as teacher; use model.llm.finetune=frozen or lora"
            )
        disable = llm.disable_adapter() if hasattr(llm, "disable_adapter") else contextlib.nullcontext()
        was_training = llm.training
        llm.eval()
        try:
            with disable:
                mask = teacher["attention_mask"].to(speechlm.device)
                out = llm(
                    input_ids=teacher["input_ids"].to(speechlm.device),
                    attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                )
        finally:
            llm.train(was_training)
        return out.logits

    # ---- saving: SpeechLM folders named step-N, with Trainer's state beside the model files ----

    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.is_fsdp_enabled:
            # Every rank takes part in gathering the sharded weights into one full state dict.
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state_dict = get_model_state_dict(self.model, options=options)
            if self.args.should_save:
                logger.info("FSDP: gathered %d tensors from %d processes for %s", len(state_dict),
                            self.args.world_size, output_dir)  # fmt: skip
        elif not self.is_deepspeed_enabled:
            state_dict = None  # unsharded: the modules hold the weights (and DDP's copies are identical)
        # DeepSpeed hands over the state dict it gathered (ZeRO-3), or the module's own (ZeRO-1/2).
        if self.args.should_save:  # one writer, whatever the number of ranks
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=state_dict)

    def _save_checkpoint(self, model, trial):
        output_dir = os.path.join(self.args.output_dir, f"{CHECKPOINT_PREFIX}-{self.state.global_step}")
        self.store_flos()
        self.save_model(output_dir, _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(output_dir)
            self._save_scaler(output_dir)
            self._save_rng_state(output_dir)
        if self.args.should_save:
            for cb in [
                c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)
            ]:
                name = cb.__class__.__name__
                if isinstance(self.state.stateful_callbacks.get(name), list):
                    self.state.stateful_callbacks[name].append(cb.state())
                else:
                    self.state.stateful_callbacks[name] = cb.state()
            # Last: its presence marks the checkpoint complete (see step_checkpoints).
            self.state.save_to_json(os.path.join(output_dir, TRAINER_STATE))
            rotate_checkpoints(
                self.args.output_dir, self.args.save_total_limit, checkpoint_prefix=CHECKPOINT_PREFIX
            )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        speechlm = self.accelerator.unwrap_model(model if model is not None else self.model)
        speechlm.load_weights(resume_from_checkpoint, full_llm=True)
