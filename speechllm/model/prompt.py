"""Prompt assembly and the batch collator.

A speech row becomes the LLM's own chat template with the audio embeddings spliced into the user turn:

    <user turn start> [audio embeddings] \\n Transcript: "..." \\n <instruction> <user turn end>
    <assistant turn start> <target tokens> <end of turn>

The template is rendered with sentinel strings where the audio and the assistant contents go, and the
rendering is split at the sentinels into text pieces. Assistant contents are tokenized on their own as
`tokenizer(target, add_special_tokens=False)`, exactly as the target-generation and token-filtering
stages tokenize them, so a row's `keep_mask` lines up token for token. Labels are set on the assistant
tokens (masked ones excepted) and on the end-of-turn token that closes the turn, so the model learns
to stop; everything else gets -100.

Row format (a dict):
    audio_path (str) | audio (np.ndarray, 16 kHz mono; optional `sampling_rate`) | encoder_features
        (cached `SpeechLM.encode_audio` output, (num_taps, frames, hidden)) | none (text-only row);
    transcript (str | None);
    instruction (str) and target (str | None) for speech rows, or messages (list of {"role", "content"})
        for text-only rows (assistant turns are trained on);
    keep_mask (list[int], optional): 0 masks a target token out of the loss;
    target_ids (list[int], optional): an answer sampled from a model, as token ids; it replaces `target`
        (or the assistant turn) and follows the generation prompt exactly as sampled, every id labelled;
    clip_id (str, optional): names the clip in errors.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import torch

from speechllm.audio import SAMPLE_RATE, check_array, load_audio, resample
from speechllm.model.encoder import pad_features

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Sentinels that no template alters and no text contains.
_AUDIO = "\u27e6speechllm-audio\u27e7"
_TARGET = "\u27e6speechllm-target-{}\u27e7"
_SPLIT = re.compile("(\u27e6speechllm-(?:audio|target-\\d+)\u27e7)")


@dataclass
class PromptConfig:
    """How the speech prompt is written (the `model.prompt` config section).

    Attributes:
        system: system message, or None for the template's default.
        transcript: put the transcript as text after the audio (DeSTA2).
        transcript_template: how the transcript is written; `{transcript}` is replaced.
        separator: text between the audio, the transcript and the instruction.
    """

    system: str | None = None
    transcript: bool = True
    transcript_template: str = 'Transcript: "{transcript}"'
    separator: str = "\n"


def _row_name(row: dict, i: int) -> str:
    return str(row.get("clip_id") or row.get("audio_path") or f"<row {i}>")


def speech_messages(row: dict, prompt: PromptConfig, with_audio: bool) -> list[dict]:
    """The user turn of a speech row as chat messages, with the audio sentinel.

    Args:
        row: a speech row (`instruction`, optional `transcript`).
        prompt: prompt settings.
        with_audio: put the audio placeholder first in the user turn.

    Returns:
        [system?, user] messages.
    """
    parts = [_AUDIO] if with_audio else []
    if prompt.transcript and row.get("transcript"):
        parts.append(prompt.transcript_template.format(transcript=row["transcript"]))
    parts.append(row["instruction"])
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return messages + [{"role": "user", "content": prompt.separator.join(parts)}]


class PromptTokenizer:
    """Turns chat messages (with sentinels) into token pieces with labels.

    Args:
        tokenizer: the LLM's tokenizer (needs a chat template).
    """

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the LLM's tokenizer has no chat template; use an instruct/chat model")
        self.tokenizer = tokenizer
        self.end_of_turn = self._find_end_of_turn()

    def _find_end_of_turn(self) -> int | None:
        """The special token the template writes right after an assistant message (e.g. <|im_end|>)."""
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _TARGET.format(0)}]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False)
        after = text.split(_TARGET.format(0), 1)[1]
        ids = self.tokenizer(after, add_special_tokens=False).input_ids
        special = set(self.tokenizer.all_special_ids)
        for tok in ids:
            if tok in special:
                return tok
        return ids[0] if ids else self.tokenizer.eos_token_id

    def encode(
        self, messages: list[dict], keep_masks: dict[int, list[int]] | None = None, generation: bool = False
    ) -> tuple[list[int], list[int], int | None]:
        """Tokenize a conversation, training on its assistant turns.

        Args:
            messages: chat messages; a user content may contain the audio sentinel.
            keep_masks: per assistant-turn index, a 0/1 mask over that turn's tokens.
            generation: end with the template's generation prompt (assistant turns are not expected).

        Returns:
            (input_ids, labels, audio_position): audio_position is the index in input_ids where the audio
            embeddings are inserted (None if the messages have no audio sentinel).
        """
        keep_masks = keep_masks or {}
        targets = []
        rendered = []
        for m in messages:
            if m["role"] == "assistant" and not generation:
                rendered.append({"role": "assistant", "content": _TARGET.format(len(targets))})
                targets.append(m["content"])
            else:
                rendered.append(m)
        text = self.tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=generation)
        ids: list[int] = []
        labels: list[int] = []
        audio_at = None
        label_end_of_turn = False
        for piece in _SPLIT.split(text):
            if not piece:
                continue
            if piece == _AUDIO:
                audio_at = len(ids)
                continue
            if piece.startswith("\u27e6speechllm-target-"):
                t = int(piece[len("\u27e6speechllm-target-") : -1])
                tok = self.tokenizer(targets[t], add_special_tokens=False).input_ids
                mask = keep_masks.get(t)
                if mask is not None and len(mask) != len(tok):
                    raise ValueError(
                        f"keep_mask has {len(mask)} entries but the target has {len(tok)} tokens "
                        "(it must come from tokenizer(target, add_special_tokens=False) with this LLM's tokenizer)"
                    )
                ids += tok
                labels += [x if (mask is None or mask[j]) else IGNORE_INDEX for j, x in enumerate(tok)]
                label_end_of_turn = True
                continue
            tok = self.tokenizer(piece, add_special_tokens=False).input_ids
            lab = [IGNORE_INDEX] * len(tok)
            if label_end_of_turn and self.end_of_turn in tok:
                # Train the turn's closing token so the model learns to stop.
                j = tok.index(self.end_of_turn)
                lab[j] = tok[j]
            label_end_of_turn = False
            ids += tok
            labels += lab
        return ids, labels, audio_at


class SpeechCollator:
    """Rows -> a model batch (see the module docstring for the row format).

    Args:
        model: the SpeechLM (its tokenizer, prompt settings, encoder geometry and adapter lengths are used).
        padding_side: "right" for training, "left" for generation.
        generation: build generation prompts (targets are ignored).

    Returns (from `__call__`) a dict of tensors:
        input_ids, attention_mask: (batch, seq); audio slots hold the pad id.
        labels: (batch, seq), -100 off the assistant tokens (omitted when `generation`).
        audio_mask: (batch, seq), True where the audio embeddings go.
        and for the rows with audio, in row order, either
        input_features (windows, mels, mel_frames), window_frames (windows,), windows_per_clip (clips,)
        or encoder_features (clips, num_taps, frames, hidden), encoder_mask (clips, frames).
    """

    def __init__(self, model, padding_side: str = "right", generation: bool = False):
        self.tokenizer = model.tokenizer
        self.prompt_tokenizer = model.prompt_tokenizer
        self.prompt = model.prompt
        self.encoder = model.encoder
        self.output_length = model.adapter.output_length
        self.padding_side = padding_side
        self.generation = generation

    def _audio(self, row: dict, i: int) -> np.ndarray | None:
        name = _row_name(row, i)
        if row.get("audio_path") is not None:
            clip = load_audio(row["audio_path"], sr=SAMPLE_RATE)
            return clip.array
        if row.get("audio") is not None:
            array = np.asarray(row["audio"], dtype=np.float32)
            if array.ndim == 2:
                # Channels are the short axis; stereo (or more) is averaged down to mono.
                axis = 0 if array.shape[0] < array.shape[1] else 1
                log.info("%s: downmixed %d->1 channels", name, array.shape[axis])
                array = array.mean(axis=axis)
            sr = int(row.get("sampling_rate") or SAMPLE_RATE)
            array = check_array(array, sr, name=name)
            if sr != SAMPLE_RATE:
                log.info("%s: resampled %d->%d", name, sr, SAMPLE_RATE)
                array = resample(array, sr, SAMPLE_RATE)
            return array
        return None

    def generation_ids(self, row: dict, n_audio: int) -> tuple[list[int], int]:
        """A speech row's generation prompt as `__call__` builds it, with `n_audio` audio slots (pad
        ids), and the index just past the slots."""
        messages = speech_messages(row, self.prompt, with_audio=True)
        ids, _, audio_at = self.prompt_tokenizer.encode(messages, generation=True)
        return ids[:audio_at] + [self.tokenizer.pad_token_id] * n_audio + ids[audio_at:], audio_at + n_audio

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seqs = []
        arrays, names, cached = [], [], []
        for i, row in enumerate(rows):
            name = _row_name(row, i)
            feats = row.get("encoder_features")
            array = None if feats is not None else self._audio(row, i)
            has_audio = feats is not None or array is not None
            if "messages" in row and row["messages"] is not None and not has_audio:
                messages = list(row["messages"])
                keep = {}
            elif "instruction" in row:
                messages = speech_messages(row, self.prompt, with_audio=has_audio)
                target = row.get("target")
                if target is not None and not self.generation:
                    messages.append({"role": "assistant", "content": target})
                keep = {0: list(row["keep_mask"])} if row.get("keep_mask") is not None else {}
            else:
                raise ValueError(
                    f"{name}: a row needs `instruction` (speech row) or `messages` (text-only row)"
                )
            # An answer sampled from a model comes as its token ids, labelled as they were sampled after the
            # generation prompt: the text's own tokenization could differ from the sampled tokens.
            sampled = None if self.generation else row.get("target_ids")
            if (self.generation or sampled is not None) and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            ids, labels, audio_at = self.prompt_tokenizer.encode(
                messages, keep, generation=self.generation or sampled is not None
            )
            if sampled is not None:
                ids, labels = ids + list(sampled), labels + list(sampled)
            n_audio = 0
            if feats is not None:
                feats = torch.as_tensor(np.asarray(feats) if not torch.is_tensor(feats) else feats)
                cached.append(feats)
                n_audio = self.output_length(feats.shape[1])
            elif array is not None:
                arrays.append(array)
                names.append(name)
                n_audio = self.output_length(self.encoder.num_frames(len(array), name))
            if has_audio:
                ids = ids[:audio_at] + [self.tokenizer.pad_token_id] * n_audio + ids[audio_at:]
                labels = labels[:audio_at] + [IGNORE_INDEX] * n_audio + labels[audio_at:]
            audio = [False] * len(ids)
            if has_audio:
                audio[audio_at : audio_at + n_audio] = [True] * n_audio
            seqs.append((ids, labels, audio))
        if arrays and cached:
            raise ValueError("a batch mixes cached encoder_features with raw audio; cache all rows or none")
        batch = self._pad(seqs)
        if arrays:
            mel = self.encoder.mels(arrays, names)
            batch.update(
                input_features=mel.input_features,
                window_frames=mel.window_frames,
                windows_per_clip=mel.windows_per_clip,
            )
        if cached:
            enc = pad_features([c.float() for c in cached])
            batch.update(encoder_features=enc.features, encoder_mask=enc.mask)
        return batch

    def _pad(self, seqs) -> dict[str, torch.Tensor]:
        longest = max(len(s[0]) for s in seqs)
        pad_id = self.tokenizer.pad_token_id
        out = {k: [] for k in ("input_ids", "labels", "attention_mask", "audio_mask")}
        for ids, labels, audio in seqs:
            n = longest - len(ids)
            rows = (ids, labels, [1] * len(ids), audio)
            fills = (pad_id, IGNORE_INDEX, 0, False)
            for key, seq, fill in zip(out, rows, fills, strict=True):
                out[key].append([fill] * n + seq if self.padding_side == "left" else seq + [fill] * n)
        batch = {
            "input_ids": torch.tensor(out["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(out["attention_mask"], dtype=torch.long),
            "audio_mask": torch.tensor(out["audio_mask"], dtype=torch.bool),
        }
        if not self.generation:
            batch["labels"] = torch.tensor(out["labels"], dtype=torch.long)
        return batch
