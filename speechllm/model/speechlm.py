"""SpeechLM: Whisper encoder -> adapter -> causal LLM, with strict save/load.

Checkpoint folder (`save_pretrained`):
    config.json         format version, encoder/LLM sources and settings, adapter config, prompt config
    model.safetensors   every trainable weight that is not LoRA: the adapter, plus the encoder if unfrozen
    lora/               the peft adapter (finetune=lora)
    llm/                the whole LLM and its tokenizer (finetune=full)
`from_pretrained` rebuilds the model from config.json and loads these strictly: a missing, unexpected
or shape-mismatched weight raises CheckpointError listing every offending name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from speechllm.config import check_section
from speechllm.model.alignment import alignment_loss
from speechllm.model.encoder import EncoderOutput, WhisperFeatureEncoder, load_encoder, pad_features
from speechllm.model.prompt import PromptConfig, PromptTokenizer, SpeechCollator
from speechllm.textllm import common_prefix_length, left_pad, prefill_shared

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_AUDIO_KEYS = ("input_features", "window_frames", "windows_per_clip", "encoder_features", "encoder_mask")
FINETUNE_POLICIES = ("frozen", "lora", "full")


class CheckpointError(ValueError):
    """A checkpoint that does not match its config; the message lists the offending names."""


@dataclass
class EncoderConfig:
    """`model.encoder`: which Whisper, which layers, frozen or not, and what to do with clips over 30 s."""

    source: str = "packaged:whisper-tiny.en"
    layers: list[int] | None = None
    num_taps: int = 4
    frozen: bool = True
    long_audio: str = "window"
    dtype: str | None = None


@dataclass
class LoraConfigSection:
    """`model.llm.lora`: peft LoRA settings (used when finetune=lora)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class LLMConfig:
    """`model.llm`: which LLM and how it is trained (frozen, lora, full)."""

    source: str = "packaged:smollm2-135m-instruct"
    finetune: str = "frozen"
    dtype: str | None = None
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)


MODEL_SECTIONS = ("encoder", "adapter", "llm", "prompt")


def check_model_config(model_cfg: DictConfig | dict) -> tuple[EncoderConfig, LLMConfig, PromptConfig]:
    """Validate the `model` node without loading anything.

    Returns:
        The encoder, LLM and prompt sections as their dataclasses.

    Raises:
        ValueError: a key outside the four sections (a misplaced `model.finetune` would otherwise be
            ignored), a typo or bad value inside one, an unknown fine-tuning policy, or no adapter target.
    """
    unknown = [k for k in model_cfg.keys() if k not in MODEL_SECTIONS]
    if unknown:
        raise ValueError(
            f"unknown config key 'model.{unknown[0]}'; the model's sections are {list(MODEL_SECTIONS)}"
        )
    enc_cfg = check_section(EncoderConfig, model_cfg.get("encoder"), "model.encoder.")
    llm_cfg = check_section(LLMConfig, model_cfg.get("llm"), "model.llm.")
    prompt_cfg = check_section(PromptConfig, model_cfg.get("prompt"), "model.prompt.")
    if enc_cfg.layers is None and (not isinstance(enc_cfg.num_taps, int) or enc_cfg.num_taps < 1):
        raise ValueError(f"model.encoder.num_taps must be >= 1 (or name the taps in model.encoder.layers), "
                         f"got {enc_cfg.num_taps!r}")  # fmt: skip
    if llm_cfg.finetune not in FINETUNE_POLICIES:
        raise ValueError(f"model.llm.finetune must be one of {FINETUNE_POLICIES}, got {llm_cfg.finetune!r}")
    for key, value in (("model.encoder.dtype", enc_cfg.dtype), ("model.llm.dtype", llm_cfg.dtype)):
        check_dtype(value, key)
    adapter_cfg = model_cfg.get("adapter")
    if adapter_cfg is None or "_target_" not in adapter_cfg:
        raise ValueError(
            "model.adapter needs a _target_ (choose one with model/adapter=qformer|stack_mlp|conv)"
        )
    _check_adapter_keys(adapter_cfg)
    return enc_cfg, llm_cfg, prompt_cfg


DTYPES = ("float32", "bfloat16", "float16")
# Adapter arguments the model fills in from the loaded encoder and LLM; a config never sets them.
ADAPTER_RUNTIME_ARGS = ("in_dim", "out_dim", "num_taps", "embed_rms")


def check_dtype(value, key: str) -> None:
    """A dtype setting is null (the library default), ``auto``, or one of `DTYPES`; raises ValueError naming `key`."""
    if value is not None and value != "auto" and value not in DTYPES:
        raise ValueError(f"{key}={value!r}: use one of {list(DTYPES)}, auto, or null (float32)")


def _check_adapter_keys(adapter_cfg) -> None:
    """Every `model.adapter` key is an argument of its (allow-listed) class, and the widths fit together,
    so a typo or an impossible head count fails before the models load."""
    import inspect

    from hydra.utils import get_class

    from speechllm.config import check_targets

    check_targets({"model": {"adapter": _plain(adapter_cfg)}})  # before anything is imported from it
    adapter_class = get_class(str(adapter_cfg["_target_"]))
    name = adapter_class.__name__
    params = inspect.signature(adapter_class).parameters
    settable = [p for p in params if p not in ADAPTER_RUNTIME_ARGS]
    for key in adapter_cfg:
        if key == "_target_":
            continue
        if key not in settable:
            raise ValueError(f"unknown config key 'model.adapter.{key}' for {name}; its keys: {settable}")
    hidden, heads = adapter_cfg.get("hidden_size"), adapter_cfg.get("num_heads")
    if "num_heads" in params and isinstance(hidden, int) and isinstance(heads, int):
        if heads < 1 or hidden % heads:
            raise ValueError(
                f"model.adapter.num_heads={heads} must divide model.adapter.hidden_size={hidden} "
                "(each head gets hidden_size / num_heads dimensions)"
            )


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _count(params) -> int:
    return sum(p.numel() for p in params)


class SpeechLM(nn.Module):
    """Speech-language model: encoder features -> adapter embeddings spliced into the LLM's prompt.

    Build with `SpeechLM.from_config(model_cfg)` or `SpeechLM.from_pretrained(dir)`.

    Args:
        encoder: the tapped-layer Whisper encoder.
        adapter: an adapter from `speechllm.model.adapters`.
        llm: a causal LM (a peft model when finetune=lora).
        tokenizer: the LLM's tokenizer (chat template, pad token).
        config: the plain-dict model config (encoder, adapter, llm, prompt), saved with checkpoints;
            kept as `model_config` (the Trainer takes a model's `config` for a `PretrainedConfig`).
    """

    def __init__(
        self, encoder: WhisperFeatureEncoder, adapter: nn.Module, llm: nn.Module, tokenizer, config: dict
    ):
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter
        self.llm = llm
        self.tokenizer = tokenizer
        self.model_config = config
        self.finetune = config["llm"]["finetune"]
        self.prompt = PromptConfig(**config.get("prompt") or {})
        self.prompt_tokenizer = PromptTokenizer(tokenizer)
        self._checkpointing = False
        # The token embeddings' mean square: the alignment loss's unit (see speechllm.train.align).
        self.embed_mean_square = float(llm.get_input_embeddings().weight.detach().float().pow(2).mean())
        self.log_parameter_counts()

    # ---- construction ----

    @classmethod
    def from_config(cls, model_cfg: DictConfig | dict, pretrained_dir: str | Path | None = None) -> SpeechLM:
        """Build the model from the `model` config node.

        Args:
            model_cfg: with `encoder`, `adapter` (a `_target_` node), `llm`, `prompt` sections.
            pretrained_dir: a checkpoint folder whose `llm/` (finetune=full) or `lora/` (finetune=lora)
                replaces the fresh LLM weights; other weights are loaded by `from_pretrained`.

        Returns:
            A SpeechLM (adapter freshly initialised).
        """
        from speechllm.config import instantiate
        from speechllm.sources import load_llm

        enc_cfg, llm_cfg, prompt_cfg = check_model_config(model_cfg)
        adapter_cfg = model_cfg.get("adapter")

        encoder = load_encoder(
            enc_cfg.source,
            layers=enc_cfg.layers,
            num_taps=enc_cfg.num_taps,
            frozen=enc_cfg.frozen,
            long_audio=enc_cfg.long_audio,
            dtype=enc_cfg.dtype,
        )
        dtype = llm_cfg.dtype  # a name checked above; load_llm turns it into the torch dtype
        full_dir = Path(pretrained_dir) / "llm" if pretrained_dir is not None else None
        if llm_cfg.finetune == "full" and full_dir is not None:
            llm, tokenizer = load_llm(str(full_dir), dtype=dtype)
        else:
            llm, tokenizer = load_llm(llm_cfg.source, dtype=dtype)
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of {llm_cfg.source} has no pad token")
        llm = apply_finetune(llm, llm_cfg)

        token_embeddings = llm.get_input_embeddings().weight
        adapter = instantiate(
            adapter_cfg,
            in_dim=encoder.hidden_size,
            out_dim=token_embeddings.shape[1],
            num_taps=encoder.num_taps,
            embed_rms=float(token_embeddings.detach().float().pow(2).mean().sqrt()),
        )
        config = {
            # The taps as built: a num_taps above the encoder's depth is recorded as the depth it became.
            "encoder": {
                **asdict(enc_cfg),
                "num_taps": encoder.num_taps if enc_cfg.layers is None else enc_cfg.num_taps,
            },
            "adapter": _plain(adapter_cfg),
            "llm": asdict(llm_cfg),
            "prompt": asdict(prompt_cfg),
        }
        return cls(encoder, adapter, llm, tokenizer, config)

    def log_parameter_counts(self) -> dict[str, int]:
        """Log (and return) trainable vs frozen parameter counts per component."""
        counts = {}
        for name, module in (("encoder", self.encoder), ("adapter", self.adapter), ("llm", self.llm)):
            params = list(module.parameters())
            counts[f"{name}/trainable"] = _count(p for p in params if p.requires_grad)
            counts[f"{name}/frozen"] = _count(p for p in params if not p.requires_grad)
        trainable = sum(v for k, v in counts.items() if k.endswith("trainable"))
        frozen = sum(v for k, v in counts.items() if k.endswith("frozen"))
        log.info(
            "SpeechLM parameters: %s trainable, %s frozen (adapter %s; encoder %s trainable; llm %s trainable, "
            "finetune=%s)",
            f"{trainable:,}",
            f"{frozen:,}",
            f"{counts['adapter/trainable']:,}",
            f"{counts['encoder/trainable']:,}",
            f"{counts['llm/trainable']:,}",
            self.finetune,
        )
        return counts

    def train(self, mode: bool = True):
        super().train(mode)
        if self.finetune == "frozen":
            self.llm.eval()  # a frozen LLM never runs dropout
            if mode and self._checkpointing:
                # transformers checkpoints a layer only while the layer is training; flag the layers
                # alone (not their attention and dropout modules), so they are recomputed without dropout.
                for module in self.llm.modules():
                    if getattr(module, "gradient_checkpointing", False):
                        module.training = True
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the LLM's layer activations in the backward pass instead of keeping them.

        Non-reentrant checkpointing: the reentrant kind returns no gradient through a layer whose inputs
        need none, as in a text-only batch of a LoRA model (the embeddings are frozen). Works for every
        fine-tuning policy, a frozen LLM included (the audio's gradient still crosses every layer).
        """
        self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self._checkpointing = True
        self.train(self.training)

    def collator(self, padding_side: str = "right", generation: bool = False) -> SpeechCollator:
        """A collator turning rows into batches for this model (see `speechllm.model.prompt`)."""
        return SpeechCollator(self, padding_side=padding_side, generation=generation)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ---- forward ----

    def audio_embeddings(
        self,
        input_features: torch.Tensor | None = None,
        window_frames: torch.Tensor | None = None,
        windows_per_clip: torch.Tensor | None = None,
        encoder_features: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter output for the batch's audio (raw log-mels or cached encoder features).

        Returns:
            (embeds, mask). Shapes: (clips, slots, llm_hidden), (clips, slots).
        """
        if encoder_features is not None:
            enc = EncoderOutput(encoder_features.to(self.device), encoder_mask.to(self.device))
        else:
            enc = self.encoder(input_features, window_frames, windows_per_clip)
        adapter_dtype = next(self.adapter.parameters()).dtype
        return self.adapter(enc.features.to(adapter_dtype), enc.mask)

    def embed(self, input_ids: torch.Tensor, audio_mask: torch.Tensor | None = None, **audio) -> torch.Tensor:
        """Token embeddings with the audio slots replaced by adapter output.

        Shapes: input_ids (batch, seq), audio_mask (batch, seq) -> (batch, seq, llm_hidden).
        """
        return self._embed(input_ids, audio_mask, **audio)[0]

    def _embed(self, input_ids: torch.Tensor, audio_mask: torch.Tensor | None = None, **audio):
        """(embeds, audio embeds, slot mask); the last two are None without audio."""
        embeds = self.llm.get_input_embeddings()(input_ids.to(self.device))
        if audio_mask is None or not bool(audio_mask.any()):
            return embeds, None, None
        audio_embeds, slot_mask = self.audio_embeddings(**audio)
        audio_mask = audio_mask.to(self.device)
        rows_with_audio = audio_mask.any(1)
        if not torch.equal(audio_mask[rows_with_audio].sum(1), slot_mask.sum(1)):
            raise ValueError(
                f"audio slots in the prompt {audio_mask[rows_with_audio].sum(1).tolist()} do not match the "
                f"adapter's output lengths {slot_mask.sum(1).tolist()}: the batch was built for another model"
            )
        # Both sides flatten row-major in row order, so the i-th slot gets the i-th valid embedding.
        embeds = embeds.masked_scatter(audio_mask[..., None], audio_embeds[slot_mask].to(embeds.dtype))
        return embeds, audio_embeds, slot_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        window_frames: torch.Tensor | None = None,
        windows_per_clip: torch.Tensor | None = None,
        encoder_features: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        align_ids: torch.Tensor | None = None,
        labelled_logits_only: bool = False,
        **llm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Loss (mean over labelled tokens) and logits for a collated batch.

        With `align_ids` (target token ids per audio slot, see `speechllm.train.align`), the output also
        holds `align_loss`: how far the audio embeddings are from those tokens' embeddings (not added
        to `loss`; the trainer weighs it).

        With `labelled_logits_only` (and labels), the LM head runs only where a label is predicted: the
        output has no `logits`, but `loss`, `label_logprob` (each row's summed log-probability of its
        labelled tokens) and `labelled_logits` (the logits of the labelled positions, row-major). With a 49k vocabulary and answers of a few tokens, the head over every prompt
        position is most of a forward pass's cost.

        Shapes: input_ids/attention_mask/labels/audio_mask (batch, seq) -> logits (batch, seq, vocab),
            label_logprob (batch,); align_ids (clips with audio, slots).
        """
        embeds, audio_embeds, slot_mask = self._embed(
            input_ids,
            audio_mask,
            input_features=input_features,
            window_frames=window_frames,
            windows_per_clip=windows_per_clip,
            encoder_features=encoder_features,
            encoder_mask=encoder_mask,
        )
        attention_mask = attention_mask.to(self.device)
        # Positions count real tokens only, so left- and right-padded batches see the same positions.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        if labelled_logits_only and labels is not None:
            out = self._labelled_forward(
                embeds, attention_mask, position_ids, labels.to(self.device), llm_kwargs
            )
        else:
            out = self.llm(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels.to(self.device) if labels is not None else None,
                **llm_kwargs,
            )
        if out.loss is not None and self.training and (audio_mask is None or not bool(audio_mask.any())):
            # A text-only batch does not reach the adapter; a zero-weighted term keeps its parameters in
            # the graph, so backward works with a frozen LLM and DDP sees every parameter used.
            out.loss = out.loss + 0.0 * sum(p.sum() for p in self.adapter.parameters())
        if align_ids is not None and audio_embeds is not None:
            weights = self.llm.get_input_embeddings().weight
            out["align_loss"] = alignment_loss(
                audio_embeds, slot_mask, align_ids, weights, self.embed_mean_square
            )
        return out

    def _labelled_forward(
        self, embeds, attention_mask, position_ids, labels, llm_kwargs
    ) -> CausalLMOutputWithPast:
        """The decoder on every position, the LM head only where a next token is labelled."""
        hidden = self.llm.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **llm_kwargs
        ).last_hidden_state
        targets = labels[:, 1:]
        where = targets != -100
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][where]).float()
        nll = nn.functional.cross_entropy(logits, targets[where], reduction="none")
        per_row = torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device)
        per_row = per_row.index_add(0, where.nonzero()[:, 0], -nll)
        loss = nll.mean() if nll.numel() else hidden.sum() * 0.0
        out = CausalLMOutputWithPast(loss=loss)
        out["label_logprob"] = per_row
        out["labelled_logits"] = logits  # (labelled positions in row-major order, vocab)
        return out

    # ---- inference ----

    @torch.no_grad()
    def generate(
        self,
        rows: list[dict] | dict,
        max_new_tokens: int = 128,
        share_prefix: bool = True,
        return_ids: bool = False,
        **gen_kwargs: Any,
    ) -> list[str] | list[list[int]]:
        """Answer a batch of rows (greedy unless sampling settings are given).

        Args:
            rows: rows (see `speechllm.model.prompt`; targets are ignored), or a batch from
                `collator(padding_side="left", generation=True)`. Speech rows without a transcript get
                one from Whisper when `prompt.transcript` is on.
            max_new_tokens: generation length limit.
            share_prefix: rows about the same clip (one `audio_path` and transcript) have their prompt
                up to the question, audio included, encoded and run once (`_generate_shared`); greedy
                answers equal the unshared ones up to float noise.
            **gen_kwargs: passed to the LLM's `generate` (do_sample, temperature, top_p, ...).

        Returns:
            One decoded answer per row.
        """
        if isinstance(rows, list | tuple):
            rows = self.with_transcripts(list(rows))
            groups = self._clip_groups(rows) if share_prefix else []
            if groups:
                answers: list[str | None] = [None] * len(rows)
                for i, text in self._generate_shared(rows, groups, max_new_tokens, gen_kwargs, return_ids):
                    answers[i] = text
                rest = [i for i, a in enumerate(answers) if a is None]
                if rest:
                    texts = self.generate([rows[i] for i in rest], max_new_tokens, False, return_ids, **gen_kwargs)
                    for i, text in zip(rest, texts, strict=True):
                        answers[i] = text
                return answers  # type: ignore[return-value]
            batch = self.collator(padding_side="left", generation=True)(rows)
        else:
            batch = rows
            if bool((batch["attention_mask"][:, -1] == 0).any()):
                raise ValueError(
                    "generate needs a left-padded batch: use collator(padding_side='left', generation=True)"
                )
        audio = {k: batch[k] for k in _AUDIO_KEYS if k in batch}
        with self._inference():
            embeds = self.embed(batch["input_ids"], batch.get("audio_mask"), **audio)
            out = self.llm.generate(
                inputs_embeds=embeds,
                attention_mask=batch["attention_mask"].to(self.device),
                max_new_tokens=max_new_tokens,
                **self._generation_kwargs(gen_kwargs),
            )
        # With inputs_embeds only, decoder-only generate returns just the new tokens.
        return self._answers(out, return_ids)

    def _answers(self, out: torch.Tensor, return_ids: bool) -> list[str] | list[list[int]]:
        """Generated tokens -> answer texts, or token ids cut after the token that ended each answer (the
        padding after it dropped)."""
        if not return_ids:
            return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        stop = set(self._generation_kwargs({})["eos_token_id"])
        answers = []
        for seq in out.tolist():
            end = next((j + 1 for j, tok in enumerate(seq) if tok in stop), len(seq))
            answers.append(seq[:end])
        return answers

    def _generation_kwargs(self, gen_kwargs: dict) -> dict:
        """Greedy by default; stop at the LLM's EOS and at the chat template's end of turn."""
        out = {"do_sample": False, "pad_token_id": self.tokenizer.pad_token_id, **gen_kwargs}
        eos = self.llm.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if self.prompt_tokenizer.end_of_turn is not None and self.prompt_tokenizer.end_of_turn not in eos:
            eos.append(self.prompt_tokenizer.end_of_turn)
        out.setdefault("eos_token_id", eos)
        return out

    @contextlib.contextmanager
    def _inference(self):
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @staticmethod
    def _clip_groups(rows: list[dict]) -> list[list[int]]:
        """Indices of rows that ask about the same clip (one `audio_path` and transcript), two or more."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            if (
                row.get("audio_path") is not None
                and "instruction" in row
                and row.get("encoder_features") is None
            ):
                groups.setdefault((str(row["audio_path"]), row.get("transcript")), []).append(i)
        return [g for g in groups.values() if len(g) > 1]

    def _generate_shared(
        self, rows: list[dict], members: list[list[int]], max_new_tokens: int, gen_kwargs: dict,
        return_ids: bool = False,
    ) -> list[tuple[int, str | list[int]]]:
        """`generate` for groups of rows about one clip: each clip's audio is encoded once and its prompt
        up to the question (system turn, audio slots, transcript) run through the LLM once; that KV
        cache is copied to each of its questions, which then run as one left-padded batch.

        Returns:
            (row index, answer) for every row of the groups.
        """
        collate = self.collator(padding_side="left", generation=True)
        first = collate([rows[g[0]] for g in members])  # one row per clip: its audio, encoded once
        n_audio = first["audio_mask"].sum(1).tolist()
        lengths = first["attention_mask"].sum(1).tolist()
        width = first["input_ids"].shape[1]
        ids, shared = {}, []
        for k, g in enumerate(members):
            own = [collate.generation_ids(rows[i], n_audio[k]) for i in g]
            if own[0][0] != first["input_ids"][k, width - lengths[k] :].tolist():
                raise AssertionError(
                    f"{rows[g[0]]['audio_path']}: generation_ids disagrees with the collator"
                )
            ids.update(zip(g, (o[0] for o in own), strict=True))
            common = min(len(o[0]) - 1 for o in own)
            common = min([common, *(common_prefix_length(own[0][0], o[0]) for o in own[1:])])
            if common < own[0][1]:
                raise AssertionError(
                    f"{rows[g[0]]['audio_path']}: prompts about one clip differ before its audio ends"
                )
            shared.append(common)
        audio = {k: first[k] for k in _AUDIO_KEYS if k in first}
        with self._inference():
            embeds = self.embed(first["input_ids"], first["audio_mask"], **audio)
            hidden = embeds.shape[-1]
            prefix = embeds.new_zeros(len(members), max(shared), hidden)
            prefix_mask = torch.zeros(len(members), max(shared), dtype=torch.long)
            for k, n in enumerate(shared):
                start = width - lengths[k]
                prefix[k, prefix.shape[1] - n :] = embeds[k, start : start + n]
                prefix_mask[k, prefix.shape[1] - n :] = 1
            prefix_mask = prefix_mask.to(self.device)
            order = [i for g in members for i in g]
            group_of_row = torch.tensor([k for k, g in enumerate(members) for _ in g], device=self.device)
            cache = prefill_shared(self.llm, prefix_mask, group_of_row, inputs_embeds=prefix)
            own_ids, own_mask = left_pad(
                [ids[i][shared[k] :] for k, g in enumerate(members) for i in g], self.tokenizer.pad_token_id
            )
            own_embeds = self.llm.get_input_embeddings()(own_ids.to(self.device)).to(prefix.dtype)
            out = self.llm.generate(
                inputs_embeds=torch.cat([prefix[group_of_row], own_embeds], dim=1),
                attention_mask=torch.cat([prefix_mask[group_of_row], own_mask.to(self.device)], dim=1),
                cache=cache,
                max_new_tokens=max_new_tokens,
                **self._generation_kwargs(gen_kwargs),
            )
        return list(zip(order, self._answers(out, return_ids), strict=True))

    def with_transcripts(self, rows: list[dict]) -> list[dict]:
        """The rows, those without a `transcript` (None) copied with this model's Whisper transcript filled
        in, when the prompt carries one; the caller's rows are not changed. Evaluation calls it once per
        clip before asking its questions, so a clip is not transcribed again for every question."""
        if not self.prompt.transcript:
            return rows
        need = [
            i
            for i, r in enumerate(rows)
            if r.get("transcript") is None and (r.get("audio_path") is not None or r.get("audio") is not None)
        ]
        if not need:
            return rows
        collate = self.collator(generation=True)
        arrays = [collate._audio(rows[i], i) for i in need]
        texts = self.transcribe(arrays)
        rows = [dict(r) for r in rows]
        for i, text in zip(need, texts, strict=True):
            rows[i]["transcript"] = text
        return rows

    @torch.no_grad()
    def transcribe(self, arrays: list, max_new_tokens: int = 128) -> list[str]:
        """Whisper transcripts of the encoder's source, written as the describe stage writes the
        training transcripts (`speechllm.describe.transcript.transcribe`: batched, trimmed), so the
        model reads the same kind of transcript at inference as in training. Audio over Whisper's 30 s
        is transcribed in 30-s windows, joined.

        Args:
            arrays: mono float32 clips at 16 kHz.
            max_new_tokens: token limit per 30-s window.

        Returns:
            One transcript per clip.
        """
        from speechllm.describe import load_attribute_config
        from speechllm.describe.transcript import WHISPER_MAX_SECONDS, transcribe

        # The describe stage's ASR settings (conf/attributes/transcript.yaml), with this model's Whisper.
        asr = load_attribute_config("transcript")

        step = int(WHISPER_MAX_SECONDS * 16000)
        windows, owners = [], []
        for i, array in enumerate(arrays):
            for start in range(0, max(len(array), 1), step):
                windows.append(array[start : start + step])
                owners.append(i)
        texts = transcribe(
            windows,
            self.model_config["encoder"]["source"],
            batch_size=asr["batch_size"],
            max_new_tokens=max_new_tokens,
            trim=asr["trim"],
            trim_margin_seconds=asr["trim_margin_seconds"],
            backend=asr["backend"],
            compute_type=asr["compute_type"],
            beam_size=asr["beam_size"],
            language=asr["language"],
        )
        joined: list[list[str]] = [[] for _ in arrays]
        for i, text in zip(owners, texts, strict=True):
            joined[i].append(text)
        return [" ".join(t for t in parts if t) for parts in joined]

    @torch.no_grad()
    def encode_audio(self, audio: list, batch_size: int = 8) -> list[torch.Tensor]:
        """Tapped encoder features per clip, for caching (pass back as a row's `encoder_features`).

        Args:
            audio: file paths or mono float32 arrays at 16 kHz (checked like the collator's inputs).
            batch_size: clips encoded together.

        Returns:
            One float32 CPU tensor per clip. Shapes: (num_taps, frames, encoder_hidden), valid frames only.
        """
        collate = self.collator()
        out = []
        for start in range(0, len(audio), batch_size):
            chunk = audio[start : start + batch_size]
            rows = [{"audio_path": str(a)} if isinstance(a, str | Path) else {"audio": a} for a in chunk]
            arrays = [collate._audio(r, start + i) for i, r in enumerate(rows)]
            names = [str(r.get("audio_path", f"<audio {start + i}>")) for i, r in enumerate(rows)]
            mel = self.encoder.mels(arrays, names)
            enc = self.encoder(mel.input_features, mel.window_frames, mel.windows_per_clip)
            for feats, mask in zip(enc.features, enc.mask, strict=True):
                out.append(feats[:, mask].float().cpu())
        return out

    # ---- save / load ----

    @property
    def _no_split_modules(self) -> list[str]:
        """Layer classes that FSDP shards as units (its transformer auto-wrap policy reads this, as it does
        for a transformers model): the LLM's decoder layers, the encoder's layers and the adapter's."""
        llm = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        names = list(getattr(llm, "_no_split_modules", None) or [])
        names += list(getattr(self.encoder.encoder, "_no_split_modules", None) or [])
        names += [
            type(m).__name__ for m in self.adapter.modules() if isinstance(m, nn.TransformerDecoderLayer)
        ]
        return list(dict.fromkeys(names))

    def _saved_state(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The weights stored in model.safetensors: the adapter, plus the encoder when it trains.

        Args:
            state_dict: this model's full `state_dict()` gathered from its shards (FSDP, DeepSpeed ZeRO-3);
                None reads the weights from the modules.
        """
        if state_dict is None:
            state = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
            if not self.encoder.frozen:
                state.update({f"encoder.{k}": v for k, v in self.encoder.encoder.state_dict().items()})
            return state
        state = {k: v for k, v in state_dict.items() if k.startswith("adapter.")}
        if not self.encoder.frozen:
            inner = "encoder.encoder."  # the Whisper encoder inside WhisperFeatureEncoder
            state.update(
                {"encoder." + k[len(inner) :]: v for k, v in state_dict.items() if k.startswith(inner)}
            )
        return state

    def save_pretrained(self, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the checkpoint folder (see the module docstring).

        Args:
            out_dir: created if missing.
            state_dict: this model's full `state_dict()` when its weights are sharded across processes
                (FSDP, DeepSpeed ZeRO-3: gathered by the trainer); None reads the modules' own weights.

        Returns:
            The folder.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {"format": "speechllm", "format_version": FORMAT_VERSION, **self.model_config}
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self._saved_state(state_dict).items()}
        weights = out_dir / "model.safetensors"
        try:
            save_file(state, str(weights), metadata={"format": "pt"})
        except Exception as err:  # safetensors reports a full disk as its own error type, not an OSError
            if "os error 28" in str(err):
                weights.unlink(missing_ok=True)
                raise OSError(errno.ENOSPC, "No space left on device", str(weights)) from None
            raise
        llm_state = None
        if state_dict is not None:
            llm_state = {k[len("llm.") :]: v for k, v in state_dict.items() if k.startswith("llm.")}
        if self.finetune == "lora":
            self.llm.save_pretrained(str(out_dir / "lora"), safe_serialization=True, state_dict=llm_state)
        elif self.finetune == "full":
            self.llm.save_pretrained(str(out_dir / "llm"), safe_serialization=True, state_dict=llm_state)
            self.tokenizer.save_pretrained(str(out_dir / "llm"))
        log.info("saved SpeechLM checkpoint to %s", out_dir)
        return out_dir

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path, **overrides: Any) -> SpeechLM:
        """Rebuild a saved model and load its weights strictly.

        Args:
            ckpt_dir: a folder written by `save_pretrained`.
            **overrides: config sections merged over the saved config, e.g.
                `encoder={"long_audio": "refuse"}` or `llm={"source": "/local/copy"}`.

        Returns:
            The model, in eval mode.

        Raises:
            CheckpointError: missing files, or weights that do not match the config (names listed).
        """
        ckpt_dir = Path(ckpt_dir)
        cfg_path = ckpt_dir / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{ckpt_dir}: no config.json; not a SpeechLM checkpoint")
        try:
            config = json.loads(cfg_path.read_text())
        except (ValueError, OSError) as err:
            raise CheckpointError(f"{cfg_path}: unreadable ({err})") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{cfg_path}: not a JSON object")
        found = (config.pop("format", None), config.pop("format_version", None))
        if found != ("speechllm", FORMAT_VERSION):
            raise CheckpointError(
                f"{cfg_path}: format={found[0]!r}, format_version={found[1]!r}; this speechllm reads "
                f"format='speechllm', format_version={FORMAT_VERSION}"
            )
        merged = OmegaConf.merge(OmegaConf.create(config), OmegaConf.create(overrides))
        try:  # a config that cannot be right (a tampered _target_, an unknown dtype) is named before anything loads
            check_model_config(merged)
        except ValueError as err:
            raise CheckpointError(f"{cfg_path}: {err}") from None
        model = cls.from_config(merged, pretrained_dir=ckpt_dir)
        model.load_weights(ckpt_dir)  # a fully fine-tuned LLM was already built from ckpt_dir/llm
        return model.eval()

    def load_weights(self, ckpt_dir: str | Path, *, full_llm: bool = False) -> None:
        """Load a checkpoint's trained weights into this already built model, strictly.

        Args:
            ckpt_dir: a folder written by `save_pretrained` (or a training `step-N` checkpoint).
            full_llm: also load `llm/` when the LLM is fully fine-tuned (resuming training; a model built
                by `from_pretrained` already has it).

        Raises:
            CheckpointError: missing files, or weights whose names or shapes do not match this model.
        """
        ckpt_dir = Path(ckpt_dir)
        weights = ckpt_dir / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{ckpt_dir}: model.safetensors is missing")
        _strict_load(self._saved_state(), _read_safetensors(weights), weights)
        if self.finetune == "lora":
            from peft import get_peft_model_state_dict, set_peft_model_state_dict

            lora_file = ckpt_dir / "lora" / "adapter_model.safetensors"
            if not lora_file.is_file():
                raise CheckpointError(f"{ckpt_dir}: finetune=lora but {lora_file} is missing")
            saved = _read_safetensors(lora_file)
            expected = get_peft_model_state_dict(self.llm)
            _check_names(expected, saved, lora_file)
            set_peft_model_state_dict(self.llm, saved)
        elif self.finetune == "full" and full_llm:
            files = sorted((ckpt_dir / "llm").glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{ckpt_dir}/llm has no safetensors weights (finetune=full)")
            state = {}
            for f in files:
                state.update(_read_safetensors(f))
            missing, unexpected = self.llm.load_state_dict(state, strict=False)
            tied = {"lm_head.weight"} if getattr(self.llm.config, "tie_word_embeddings", False) else set()
            if set(missing) - tied or unexpected:
                raise CheckpointError(
                    f"{ckpt_dir}/llm does not match the LLM: missing {missing}, unexpected {unexpected}"
                )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a CheckpointError naming it."""
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError (not an OSError) for a bad header
        raise CheckpointError(f"{path}: unreadable safetensors ({err})") from None


def _check_names(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(saved) & set(expected)
        if saved[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        if mismatched:
            parts.append(f"shape mismatch {mismatched}")
        raise CheckpointError(f"{path} does not match the model built from config.json: " + "; ".join(parts))


def _strict_load(target: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], path: Path) -> None:
    """Copy `saved` into the tensors of `target` after checking names and shapes match exactly."""
    _check_names(target, saved, path)
    with torch.no_grad():
        for k, t in target.items():
            t.copy_(saved[k].to(t.dtype))


def apply_finetune(llm: nn.Module, cfg: LLMConfig) -> nn.Module:
    """Freeze the LLM, wrap it with LoRA, or leave it fully trainable, per `cfg.finetune`."""
    if cfg.finetune == "full":
        llm.requires_grad_(True)
        return llm
    llm.requires_grad_(False)
    if cfg.finetune == "frozen":
        return llm
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(llm, lora)


__all__ = ["CheckpointError", "SpeechLM", "pad_features"]
