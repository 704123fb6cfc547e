"""`train(cfg)`: the whole training run, top to bottom (train.py is a thin Hydra wrapper around it).

Order matters: everything that can be wrong with the config or the data is checked before the model
is loaded (an 8B LLM takes minutes to load; a typo should take a second to report).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from pathlib import Path

import datasets
import torch
from omegaconf import DictConfig, OmegaConf

from speechllm.config import ConfigError, differences
from speechllm.data.described import DescribedDataError, described_rows
from speechllm.data.layout import features_dir
from speechllm.data.prepared import check_prepared
from speechllm.data.verify import label_classes
from speechllm.eval.probe import ClassProbe
from speechllm.model import CheckpointError, SpeechLM
from speechllm.model.alignment import AlignmentTargets
from speechllm.model.encoder import check_layers
from speechllm.model.prompt import speech_messages
from speechllm.train.align import AlignmentText, pretrain_alignment
from speechllm.train.config import TrainerConfig, validate_schema
from speechllm.train.features import FeatureCache, encoder_fingerprint
from speechllm.train.mixture import Mixture, build_mixture, speech_rows
from speechllm.train.outputs import plot_learning_curve, plot_loss, write_metrics
from speechllm.train.trainer import (
    MetricsCallback,
    ProbeCallback,
    SpeechTensorBoardCallback,
    SpeechTrainer,
    TrainCollator,
    step_checkpoints,
)

logger = logging.getLogger(__name__)


def _run_dir_given() -> bool:
    """Whether the run folder is a fixed one (always true outside a Hydra app).

    Hydra's default folder is time-stamped (`${now:...}`), so a new launch never finds the last one's
    checkpoints; a folder named on the command line or in a config is fixed.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return True  # a library call: the caller's paths.output_dir is the folder
    hc = HydraConfig.get()
    if any(o.lstrip("+").startswith("paths.output_dir=") for o in hc.overrides.task):
        return True
    node = hc.sweep if hc.mode == RunMode.MULTIRUN else hc.run
    return "${now:" not in str(OmegaConf.to_container(node, resolve=False)["dir"])


def check_resume_config(model_config: dict, ckpt_dir: str | Path) -> None:
    """Refuse to resume from a checkpoint trained under another model config.

    Args:
        model_config: the config of the model built for this run (`SpeechLM.model_config`).
        ckpt_dir: the `step-N` checkpoint to resume from.

    Raises:
        ConfigError: the checkpoint's `config.json` differs; the message lists each differing key.
    """
    saved = json.loads((Path(ckpt_dir) / "config.json").read_text())
    for key in ("format", "format_version"):
        saved.pop(key, None)
    current = json.loads(json.dumps(model_config))
    diffs = differences(saved, current, "model.", sep="->")
    if diffs:
        raise ConfigError(
            f"{ckpt_dir} was trained with another model config; resuming would train its weights under this "
            f"one. Differences (checkpoint -> now): {'; '.join(diffs[:8])}. Resume with the checkpoint's "
            "values, or start a new run."
        )


def planned_steps(trainer) -> int:
    """The optimizer steps this run's settings ask for, computed as HF Trainer computes them."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches = len(trainer.get_train_dataloader())  # this process's share under DDP, as in training
    per_epoch = max(
        batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0), 1
    )
    return math.ceil(args.num_train_epochs * per_epoch)


def checkpoint_step(ckpt_dir: str | Path) -> int:
    """The optimizer step a training checkpoint was saved at."""
    return int(json.loads((Path(ckpt_dir) / "trainer_state.json").read_text()).get("global_step", 0))


def resolve_resume(resume: str | None, checkpoints_dir: Path) -> str | None:
    """The checkpoint folder to resume from.

    Args:
        resume: None, "last" or a checkpoint path (`trainer.resume`).
        checkpoints_dir: this run's `checkpoints/` folder.

    Returns:
        A complete `step-N` folder, or None to start fresh ("last" with no checkpoint yet starts fresh).

    Raises:
        ConfigError: a given path that is not a complete checkpoint.
    """
    if resume in (None, ""):
        return None
    if resume == "last":
        if not _run_dir_given():
            raise ConfigError(
                "trainer.resume=last looks for checkpoints in this run's folder, which is a new time-stamped "
                "one unless it is named: add hydra.run.dir=<the run's folder> (hydra.sweep.dir for -m)"
            )
        found = step_checkpoints(checkpoints_dir)
        while found and (problem := _unreadable_state(found[-1])):
            # A checkpoint cut short (a full disk, a kill while writing) is passed over for the one before.
            logger.warning("trainer.resume=last: passing over %s: %s", found[-1], problem)
            found.pop()
        if not found:
            logger.info(
                "trainer.resume=last: no usable checkpoint in %s yet; starting fresh", checkpoints_dir
            )
            return None
        return str(found[-1])
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(
            f"trainer.resume={resume!r} is not a complete training checkpoint (no trainer_state.json); "
            "use 'last' or a checkpoints/step-N folder"
        )
    if problem := _unreadable_state(path):
        raise ConfigError(f"trainer.resume={resume!r}: {problem}")
    return str(path)


def _unwritable(folder: Path) -> str | None:
    """Why `folder` (created if missing) cannot be written, or None when it can."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


def _check_writable(run_dir: Path, feature_root: Path) -> None:
    """The run folder and the encoder-feature cache can be written: found out before any model loads, not at
    the first checkpoint or the first cached clip. A read-only cache that already holds features is left to
    serve them."""
    if problem := _unwritable(run_dir):
        raise ConfigError(
            f"the run folder {run_dir} cannot be written ({problem}); set hydra.run.dir elsewhere"
        )
    holds_features = feature_root.is_dir() and any(p.is_dir() for p in feature_root.iterdir())
    if not holds_features and (problem := _unwritable(feature_root)):
        raise ConfigError(
            f"the encoder-feature cache {feature_root} cannot be written ({problem}); "
            "set trainer.feature_cache_dir to a writable folder"
        )


def _unreadable_state(checkpoint: Path) -> str | None:
    """Why a checkpoint's trainer_state.json cannot be resumed from, or None when it can."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        return f"trainer_state.json is unreadable ({type(err).__name__}: {err})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    return None


def load_mixture(cfg: DictConfig, paths, top, mixture_cfg) -> Mixture:
    """Read the prepared targets and replay datasets and mix them.

    Args:
        cfg: the composed config (`target.token_filter.enabled` decides whether keep masks are used).
        paths: the prepared data folders (from `check_prepared`).
        top: top-level settings (seed, split, row cap).
        mixture_cfg: replay ratio and weights.

    Returns:
        The mixture.
    """
    targets = datasets.load_from_disk(str(paths.targets))
    use_mask = bool(OmegaConf.select(cfg, "target.token_filter.enabled", default=False))
    align_text = None
    if top.align.enabled:
        try:
            align_text = AlignmentText(top.align.renderer, top.align.attributes)
        except (KeyError, FileNotFoundError) as err:
            raise ConfigError(f"align: {err.args[0] if err.args else err}") from None
    rows = speech_rows(targets, split=top.train_split, use_keep_mask=use_mask, max_rows=top.max_train_rows,
                       seed=top.seed, align_text=align_text)  # fmt: skip
    if top.loss == "kd":
        missing = [r["clip_id"] for r in rows if not r["description"]]
        if missing:
            raise ConfigError(f"loss=kd needs each clip's description; {len(missing)} rows have none "
                              f"(first: {missing[0]})")  # fmt: skip
    replay = {name: datasets.load_from_disk(str(p)) for name, p in paths.replay.items()}
    return build_mixture(rows, replay, ratio=mixture_cfg.ratio, weights=mixture_cfg.sources(), seed=top.seed)


def row_lengths(model, dataset: datasets.Dataset) -> list[int]:
    """Sequence length (prompt + audio slots + target) of each row, for length-grouped batching.

    Text is tokenized the way the collator tokenizes it; audio slots come from the clip's duration
    (read from the file header, no decoding) through the encoder's and adapter's geometry.

    Args:
        model: the SpeechLM.
        dataset: mixture rows.

    Returns:
        One length per row.
    """
    import soundfile as sf

    lengths = []
    for row in dataset:
        if row["kind"] == "speech":
            messages = speech_messages(row, model.prompt, with_audio=True)
            messages.append({"role": "assistant", "content": row["target"]})
            ids, _, _ = model.prompt_tokenizer.encode(messages)
            info = sf.info(row["audio_path"])
            samples = int(round(info.frames * model.encoder.sample_rate / info.samplerate))
            n_audio = model.adapter.output_length(model.encoder.num_frames(samples, row["clip_id"]))
            lengths.append(len(ids) + n_audio)
        else:
            ids, _, _ = model.prompt_tokenizer.encode(list(row["messages"]))
            lengths.append(len(ids))
    return lengths


def _cpu_only() -> bool:
    """No accelerator here. accelerate sets up multi-process (gloo) training only when told the run is
    on CPU; otherwise every torchrun rank would train alone on all the data as if it were rank 0."""
    return not torch.accelerator.is_available()


def training_arguments(tr: TrainerConfig, run_dir: Path, seed: int, has_replay: bool):
    """`transformers.TrainingArguments` from the trainer settings.

    Args:
        tr: validated trainer settings.
        run_dir: the run folder (checkpoints go to `checkpoints/`, TensorBoard to `tensorboard/`).
        seed: the run's seed (also the data-order seed).
        has_replay: the mixture has text-only rows, so some batches may not use the adapter (DDP
            must then look for unused parameters).

    Returns:
        TrainingArguments.
    """
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    precision = tr.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    extra = dict(tr.extra_args)
    extra.setdefault("ddp_find_unused_parameters", has_replay)
    extra.setdefault("dataloader_pin_memory", cuda)
    extra.setdefault("use_cpu", _cpu_only())
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=tr.max_steps,
        num_train_epochs=tr.num_train_epochs,
        per_device_train_batch_size=tr.per_device_train_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        learning_rate=tr.learning_rate,
        lr_scheduler_type=tr.lr_scheduler_type,
        warmup_steps=tr.warmup_steps,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=tr.logging_steps,
        save_strategy="steps" if tr.save_steps > 0 else "no",
        save_steps=max(tr.save_steps, 1),
        save_total_limit=tr.save_total_limit,
        train_sampling_strategy="group_by_length" if tr.group_by_length else "random",
        length_column_name="length",
        dataloader_num_workers=tr.dataloader_num_workers,
        seed=seed,
        data_seed=seed,
        # The collator needs every column (audio_path, messages, ...), not just the forward's arguments.
        remove_unused_columns=False,
        # TensorBoard goes through SpeechTensorBoardCallback (added in `train`), not the stock callback.
        report_to=[r for r in tr.report_to if r != "tensorboard"],
        **extra,
    )


def train(cfg: DictConfig, callbacks: list | None = None) -> dict:
    """Train a SpeechLM as the config says and write the run's outputs.

    Args:
        cfg: the composed `conf/train.yaml` config.
        callbacks: extra `transformers.TrainerCallback`s (tests use one to stop a run early).

    Returns:
        The contents of `train_metrics.json`.

    Raises:
        ConfigError: a bad config or missing prepared data, before any model is loaded.
    """
    # 1. Config and data checks: cheap, and before anything heavy.
    top, tr, mixture_cfg = validate_schema(cfg)
    paths = check_prepared(cfg, list(mixture_cfg.sources()))
    run_dir = Path(cfg.paths.output_dir)
    _check_writable(run_dir, Path(tr.feature_cache_dir or features_dir(cfg.paths.data_dir, cfg.data.name)))
    resume = resolve_resume(tr.resume, run_dir / "checkpoints")
    mixture = load_mixture(cfg, paths, top, mixture_cfg)

    # 2. The model; the seed fixes the adapter's initial weights.
    try:
        check_layers(cfg.model.encoder.source, OmegaConf.select(cfg, "model.encoder.layers"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    threads_before = torch.get_num_threads()
    if top.torch_threads is not None:
        torch.set_num_threads(top.torch_threads)
    try:
        return _train_model(cfg, callbacks, top, tr, mixture, run_dir, resume)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the process as it found it


def _train_model(cfg, callbacks, top, tr, mixture, run_dir: Path, resume: str | None) -> dict:
    """Build the model and run Trainer (steps 2-4 of :func:`train`)."""
    from transformers import set_seed

    set_seed(top.seed)
    model = _build_model(cfg, tr, resume)
    _warn_if_other_llm(mixture.dataset, cfg)

    # 3. Lengths for length-grouped batching; encoder features cached once when the encoder is frozen
    # (the training clips and the probe's held-out clips).
    dataset = mixture.dataset.add_column("length", row_lengths(model, mixture.dataset))
    probe_rows = _probe_rows(cfg, top) if top.probe.every > 0 else []
    warmup = _warmup_rows(cfg, top, dataset) if top.align.pretrain_steps > 0 and not resume else []
    feature_cache, cache_stats = None, None
    if tr.cache_encoder_features and model.encoder.frozen:
        speech = dataset.filter(lambda k: k == "speech", input_columns="kind")
        clips = list(zip(speech["clip_id"], speech["audio_path"], strict=True))
        clips += [(r["clip_id"], r["audio_path"]) for r in probe_rows + warmup]
        feature_cache, cache_stats = _fill_feature_cache(model, clips, cfg, tr)
    elif tr.cache_encoder_features:
        logger.info("encoder-feature cache off: the encoder trains (model.encoder.frozen=false)")

    def features(row: dict):
        if feature_cache is not None:
            return feature_cache.get(row["clip_id"], row["audio_path"])
        return model.encode_audio([row["audio_path"]])[0]

    align_history = []
    if warmup:
        align_history = pretrain_alignment(
            model, warmup, [r["align_text"] for r in warmup], features, steps=top.align.pretrain_steps,
            batch_size=top.align.pretrain_batch_size, learning_rate=top.align.pretrain_learning_rate,
            seed=top.seed, filler=top.align.filler, cache_dir=str(cfg.paths.cache_dir) if top.align.reuse else None,
            encoder_key=feature_cache.dir.name if feature_cache is not None else None,
        )  # fmt: skip

    if tr.adapter_learning_rate == 0:
        # The warm-up wrote what the adapter writes; the cross-entropy steps train only the reader.
        model.adapter.requires_grad_(False)
        logger.info("adapter frozen for training (trainer.adapter_learning_rate=0)")
    args = training_arguments(tr, run_dir, top.seed, has_replay=mixture.composition["replay"] > 0)
    align_targets = AlignmentTargets(model.tokenizer, top.align.filler) if top.align.weight > 0 else None
    collate = TrainCollator(
        model.collator(), feature_cache=feature_cache, teacher=top.loss in ("kd", "opd"),
        system=OmegaConf.select(cfg, "target.system", default=None), align=align_targets,
        on_policy=top.loss in ("opd", "grpo"),
    )  # fmt: skip

    params = model.log_parameter_counts()
    extra = {
        "mixture": mixture.composition,
        "parameters": params,
        "loss_type": top.loss,
        "encoder_feature_cache": {"dir": str(feature_cache.dir), **cache_stats} if feature_cache else None,
        "align_warmup": align_history,
    }

    def write_outputs(state, plot: bool = True) -> dict:
        data = write_metrics(run_dir / "train_metrics.json", state.log_history, extra)
        if plot and data["steps"]:
            plot_loss(run_dir / "loss_curve.png", data["steps"], title=f"train/loss ({run_dir.name})")
        return data

    tensorboard = (
        [SpeechTensorBoardCallback(str(run_dir / "tensorboard"))] if "tensorboard" in tr.report_to else []
    )
    probe_callback = _probe_callbacks(probe_rows, top, run_dir, features)
    trainer = SpeechTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collate,
        callbacks=[MetricsCallback(write_outputs), *tensorboard, *probe_callback, *(callbacks or [])],
        loss_type=top.loss, kd_temperature=top.kd.temperature, kd_ce_weight=top.kd.ce_weight,
        align_weight=top.align.weight, adapter_learning_rate=tr.adapter_learning_rate or None,
        opd=top.opd, grpo=top.grpo, label_classes=_label_classes(dataset) if top.loss == "grpo" else None,
    )  # fmt: skip
    for cb in probe_callback:
        cb.trainer = trainer
    if trainer.is_world_process_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "mixture.json").write_text(json.dumps(mixture.composition, indent=2))
        logger.info("run dir %s; %s", run_dir, f"resuming from {resume}" if resume else "starting fresh")
        logger.info("parallelism: %s", trainer.parallelism())

    metrics = _run_trainer(trainer, model, resume, run_dir, write_outputs)
    if top.task_kl_rows and trainer.is_world_process_zero():
        extra["task_kl"] = _task_kl(trainer, model, dataset, top, collate)
        metrics = write_outputs(trainer.state, plot=False)
    return metrics


def _task_kl(trainer, model: SpeechLM, dataset: datasets.Dataset, top, collate: TrainCollator) -> dict:
    """KL(base reading the description || trained model hearing the audio) on `task_kl_rows` training rows."""
    if model.finetune == "full":
        return {"skipped": "model.llm.finetune=full: the base LLM is gone (no LoRA to switch off)"}
    if trainer.args.world_size > 1:
        return {"skipped": "measured in one process only; rerun the checkpoint's evaluation for it"}
    speech = dataset.filter(lambda k: k == "speech", input_columns="kind")
    speech = speech.shuffle(seed=top.seed).select(range(min(top.task_kl_rows, len(speech))))
    kl_collate = TrainCollator(collate.collate, feature_cache=collate.feature_cache, teacher=True, system=collate.system)
    t0 = time.perf_counter()
    out = trainer.task_kl([dict(r) for r in speech], kl_collate)
    logger.info("task KL(base || trained) %.4f +- %.4f per answer token over %d training rows (%.0f s)",
                out["mean"], out["se"] or 0.0, out["rows"], time.perf_counter() - t0)  # fmt: skip
    return out


def _label_classes(dataset: datasets.Dataset) -> dict[str, tuple[str, ...]]:
    """Each labelled attribute's classes over the training rows (what grpo's rewards judge against)."""
    speech = dataset.filter(lambda k: k == "speech", input_columns="kind")
    rows = [{f"label_{k}": v for k, v in json.loads(labels).items()} for labels in speech["clip_labels"] if labels]
    classes = label_classes(rows)
    if not classes:
        raise ConfigError("loss=grpo needs labelled clips (label_* columns in the targets) to reward answers")
    logger.info("grpo rewards judge %s", {k: list(v) for k, v in classes.items()})
    return classes


def _build_model(cfg: DictConfig, tr: TrainerConfig, resume: str | None) -> SpeechLM:
    """The model of `cfg.model`, refused when nothing in it would train or when it is not the model the
    resumed checkpoint was trained as."""
    t0 = time.perf_counter()
    model = SpeechLM.from_config(cfg.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    beside_adapter = trainable - sum(p.numel() for p in model.adapter.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError("nothing to train: the adapter, encoder and LLM are all frozen")
    if tr.adapter_learning_rate == 0 and beside_adapter == 0:
        # Said before the warm-up, which trains the adapter that training then freezes.
        raise ConfigError("trainer.adapter_learning_rate=0 freezes the adapter, and the LLM and encoder are "
                          "frozen too: nothing left to train")  # fmt: skip
    if resume:
        check_resume_config(model.model_config, resume)
    if tr.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    logger.info("model built in %.1f s", time.perf_counter() - t0)
    return model


def _probe_callbacks(probe_rows: list[dict], top, run_dir: Path, features) -> list:
    """The listening probe's callback (none without probe clips): it asks the held-out clips' questions every
    `probe.every` steps and writes learning_curve.json and .png."""
    if not probe_rows:
        return []
    probe = ClassProbe(probe_rows, top.probe.tasks, top.probe.questions_per_task, seed=top.seed,
                       batch_size=top.probe.batch_size)  # fmt: skip
    chance = {t: 1.0 / len(next(it.classes for it in probe.items if it.task == t)) for t in probe.tasks}

    def write_curve(history: list[dict]) -> None:
        curve = {"chance": chance, "clips": len(probe_rows), "questions": len(probe.items), "history": history}
        (run_dir / "learning_curve.json").write_text(json.dumps(curve, indent=2))
        plot_learning_curve(run_dir / "learning_curve.png", history, chance,
                            title=f"listening probe, {len(probe_rows)} held-out clips")  # fmt: skip

    return [ProbeCallback(probe, top.probe.every, lambda r: {"encoder_features": features(r)}, write_curve)]


def _pickled_file(checkpoint: str) -> Path:
    """The first file of a checkpoint that `torch.load(weights_only=True)` refuses (the folder if none does)."""
    for path in sorted(Path(checkpoint).glob("*.pt*")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return path
    return Path(checkpoint)


def _run_trainer(trainer, model: SpeechLM, resume: str | None, run_dir: Path, write_outputs) -> dict:
    """Step 4 of :func:`train`: train (or resume), then the final checkpoint and metrics."""
    # HF Trainer resumed from a checkpoint that already holds every planned step would take one more.
    finished = resume is not None and checkpoint_step(resume) >= planned_steps(trainer)
    if finished:
        from transformers import TrainerState

        logger.info("%s already holds every step of this run: writing the final checkpoint from it", resume)
        model.load_weights(resume, full_llm=True)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    else:
        if resume is not None and (Path(resume) / "scaler.pt").exists() and trainer.accelerator.scaler is None:
            # Trainer would hand it to a gradient scaler this run does not have (fp16 only) and crash.
            raise CheckpointError(
                f"{Path(resume) / 'scaler.pt'}: a gradient scaler's state, but this run has no scaler "
                "(trainer.precision is not fp16); remove the file or resume with the precision it was saved with"
            )
        try:
            trainer.train(resume_from_checkpoint=resume)
        except pickle.UnpicklingError:
            # torch.load(weights_only=True) refused a file of the checkpoint (optimizer, scheduler, RNG state).
            raise CheckpointError(
                f"{_pickled_file(resume)}: a pickle that could run code, refused; resume from another checkpoint "
                "(trainer.resume=<checkpoints/step-N>) or remove this one"
            ) from None
    final = run_dir / "checkpoints" / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        # A finished run's metrics already hold the end-of-training summary the checkpoint's state lacks.
        if not (finished and (run_dir / "train_metrics.json").is_file()):
            write_outputs(trainer.state)
        logger.info("final checkpoint: %s", final)
    return json.loads((run_dir / "train_metrics.json").read_text()) if trainer.is_world_process_zero() else {}


def _probe_rows(cfg: DictConfig, top) -> list[dict]:
    """The held-out described clips the listening probe asks about (none when they are missing)."""
    try:
        return described_rows(str(cfg.paths.data_dir), str(cfg.data.name), split=top.probe.split,
                              max_clips=top.probe.max_clips, seed=top.seed)  # fmt: skip
    except DescribedDataError as err:
        logger.warning("probe off: %s", err)
        return []


def _warmup_rows(cfg: DictConfig, top, dataset: datasets.Dataset) -> list[dict]:
    """The alignment warm-up's rows (clip_id, audio_path, align_text): the speech rows of the mixture, or with
    `align.pretrain_clips=described` every described clip of the training split."""
    speech = [r for r in dataset if r["kind"] == "speech"]
    if top.align.pretrain_clips == "targets":
        return speech
    try:
        described = described_rows(str(cfg.paths.data_dir), str(cfg.data.name), split=top.train_split)
    except DescribedDataError as err:
        raise ConfigError(f"align.pretrain_clips=described: {err}") from None
    text = AlignmentText(top.align.renderer, top.align.attributes)
    rows = [
        {"clip_id": r["clip_id"], "audio_path": r["audio_path"], "align_text": text(r)} for r in described
    ]
    with_targets = len({r["clip_id"] for r in speech})
    logger.info(
        "alignment warm-up clips: %d described clips of split %r (%d have targets)",
        len(rows), top.train_split, with_targets,
    )  # fmt: skip
    return rows


def _fill_feature_cache(model, clips: list[tuple[str, str]], cfg: DictConfig, tr: TrainerConfig):
    """Encode the (clip_id, audio_path) clips not cached yet (ranks split the work), then wait for all
    ranks.

    Returns:
        (the cache, fill statistics: clips, encoded here, seconds).
    """
    from accelerate import PartialState

    root = tr.feature_cache_dir or str(features_dir(cfg.paths.data_dir, cfg.data.name))
    cache = FeatureCache(root, encoder_fingerprint(model.encoder))
    state = PartialState(cpu=_cpu_only())
    device = state.device
    encoder_device = next(model.encoder.parameters()).device
    model.encoder.to(device)
    stats = cache.fill(model, clips, shard=(state.process_index, state.num_processes))
    model.encoder.to(encoder_device)
    state.wait_for_everyone()
    missing = [c for c in set(clips) if not cache.has(*c)]
    if missing:
        raise RuntimeError(
            f"encoder-feature cache {cache.dir}: {len(missing)} clips still missing after filling"
        )
    return cache, stats


def _warn_if_other_llm(dataset: datasets.Dataset, cfg: DictConfig) -> None:
    """Self-output targets should come from the LLM being trained; say so when they do not."""
    llm = OmegaConf.select(cfg, "model.llm.source", default=None)
    target_llm = OmegaConf.select(cfg, "target.llm", default=None)
    mode = OmegaConf.select(cfg, "target.mode", default=None)
    if mode in ("self_output", "paraphrase") and llm and target_llm and llm != target_llm:
        logger.warning("targets were written by %s but the model's LLM is %s: they are not its own words",
                       target_llm, llm)  # fmt: skip
