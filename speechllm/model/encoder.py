"""Whisper encoder whose cost follows the clip's length, with features tapped from several layers.

Stock `WhisperEncoder.forward` insists on 3000 mel frames (30 s): a 3-s clip pays for 30 s of
padding, and the self-attention cost is quadratic in that padded length. Here the log-mel spectrogram
is computed for the clip's own length (rounded up to one encoder frame, 320 samples), the positional
embedding is sliced to that length (as ultravox does), and the encoder layers are called directly, so
the length check in `WhisperEncoder.forward` is never reached. In a padded batch the padded frames are
masked out of self-attention, so a clip's features do not depend on its batch mates.

Features differ from the stock encoder's on the same frames, because Whisper's self-attention is
global: in the stock encoder every frame also attends to the 30-s padding. The log-mels and the
convolutional front end (tap 0) are identical to the stock ones on the valid frames.

Clips longer than the 30-s window are split into 30-s windows whose features are concatenated
(`long_audio="window"`), or refused with an error (`long_audio="refuse"`); never cut.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from speechllm.sources import load_whisper

log = logging.getLogger(__name__)

LONG_AUDIO_POLICIES = ("window", "refuse")


@dataclass
class EncoderOutput:
    """Tapped features of a padded batch.

    Attributes:
        features: Shapes: (batch, num_taps, frames, hidden). Padded frames hold garbage; use `mask`.
        mask: Shapes: (batch, frames), True on valid frames.
    """

    features: torch.Tensor
    mask: torch.Tensor


@dataclass
class MelBatch:
    """Log-mel input for the encoder: one entry per window (a clip of <= 30 s is one window).

    Attributes:
        input_features: Shapes: (windows, num_mel_bins, mel_frames), mel_frames = 2 * (max frames + 1).
        window_frames: Shapes: (windows,), valid encoder frames of each window.
        windows_per_clip: Shapes: (clips,), how many consecutive windows belong to each clip.
    """

    input_features: torch.Tensor
    window_frames: torch.Tensor
    windows_per_clip: torch.Tensor


class LongAudioError(ValueError):
    """A clip longer than the encoder's window, with `long_audio="refuse"`."""


def check_layers(source: str, layers: list[int] | None) -> None:
    """`model.encoder.layers` against the encoder's depth, read from its config.json before any weights load.

    Raises:
        ValueError: an index outside 0..encoder_layers, naming the key and the range. A source whose
            config cannot be read here (a hub id not in the offline cache) is left to the load to report.
    """
    if layers is None:
        return
    from transformers import AutoConfig

    from speechllm.sources import SourceError, resolve_source

    try:
        num_layers = AutoConfig.from_pretrained(resolve_source(source)).encoder_layers
    except (OSError, ValueError, AttributeError, SourceError):
        return
    _check_layer_range(layers, num_layers, source)


def _check_layer_range(layers: list[int], num_layers: int, source: str | None) -> None:
    """Raise ValueError unless `layers` is a non-empty list of hidden-state indices in 0..num_layers."""
    if not layers or any(not isinstance(i, int) or not 0 <= i <= num_layers for i in layers):
        raise ValueError(f"model.encoder.layers={list(layers)}: {source or 'the encoder'} has {num_layers} "
                         f"encoder layers, so indices must be in 0..{num_layers}")  # fmt: skip


def default_taps(num_layers: int, num_taps: int) -> list[int]:
    """`num_taps` evenly spaced hidden-state indices ending at the last layer (DeSTA2 style).

    Index i is the output of encoder layer i (1-based); index 0 is the convolutional front end.

    Args:
        num_layers: encoder layers.
        num_taps: how many to tap; capped at `num_layers`.

    Returns:
        Sorted distinct indices in 1..num_layers, e.g. (32 layers, 4 taps) -> [8, 16, 24, 32].
    """
    num_taps = min(num_taps, num_layers)
    return sorted({round(num_layers * (i + 1) / num_taps) for i in range(num_taps)})


class WhisperFeatureEncoder(nn.Module):
    """Whisper's encoder, run on the clip's length, returning features of several layers.

    Args:
        encoder: a `transformers` WhisperEncoder (e.g. `WhisperForConditionalGeneration.model.encoder`).
        feature_extractor: the matching `WhisperFeatureExtractor`.
        layers: hidden-state indices to return (0 = conv front end, i = output of layer i; the last
            layer's output gets the final layer norm, as in `hidden_states[-1]` of the stock encoder).
            None: `num_taps` evenly spaced.
        num_taps: used when `layers` is None.
        frozen: no gradients, always in eval mode.
        long_audio: "window" (split into 30-s windows and concatenate) or "refuse".
        source: the source the encoder came from (recorded in checkpoints).
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_extractor,
        layers: list[int] | None = None,
        num_taps: int = 4,
        frozen: bool = True,
        long_audio: str = "window",
        source: str | None = None,
    ):
        super().__init__()
        if long_audio not in LONG_AUDIO_POLICIES:
            raise ValueError(
                f"model.encoder.long_audio must be one of {LONG_AUDIO_POLICIES}, got {long_audio!r}"
            )
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.source = source
        num_layers = encoder.config.encoder_layers
        if layers is not None and num_taps != len(layers):
            log.info("model.encoder.layers=%s chooses the taps; model.encoder.num_taps=%d is not used",
                     list(layers), num_taps)  # fmt: skip
        if layers is None and num_taps > num_layers:
            log.warning("model.encoder.num_taps=%d but the encoder has %d layers: tapping all %d",
                        num_taps, num_layers, num_layers)  # fmt: skip
        self.layers = list(layers) if layers is not None else default_taps(num_layers, num_taps)
        _check_layer_range(self.layers, num_layers, source)
        self.frozen = frozen
        self.long_audio = long_audio
        self.hidden_size = encoder.config.d_model
        self.sample_rate = feature_extractor.sampling_rate
        # One encoder frame = hop_length samples * conv2's stride (160 * 2 = 320 samples = 20 ms).
        self.samples_per_frame = (
            feature_extractor.hop_length * encoder.conv1.stride[0] * encoder.conv2.stride[0]
        )
        self.max_frames = encoder.config.max_source_positions
        self.window_samples = self.max_frames * self.samples_per_frame
        if frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def num_taps(self) -> int:
        return len(self.layers)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a frozen encoder never runs dropout
        return self

    # ---- geometry: shared with the collator, which must know how many audio slots a clip fills ----

    def split_windows(self, num_samples: int, name: str = "<audio>") -> list[tuple[int, int]]:
        """Sample ranges of the windows a clip is encoded in.

        Args:
            num_samples: clip length in samples.
            name: what to call the clip in errors.

        Returns:
            [(start, end), ...]; one range for clips up to 30 s.

        Raises:
            LongAudioError: longer than the window with `long_audio="refuse"`.
        """
        if num_samples <= self.window_samples:
            return [(0, num_samples)]
        if self.long_audio == "refuse":
            raise LongAudioError(
                f"{name}: {num_samples / self.sample_rate:.1f} s is longer than the encoder's "
                f"{self.window_samples / self.sample_rate:.0f}-s window and model.encoder.long_audio=refuse; "
                "split the audio, or set model.encoder.long_audio=window"
            )
        return [
            (s, min(s + self.window_samples, num_samples)) for s in range(0, num_samples, self.window_samples)
        ]

    def num_frames(self, num_samples: int, name: str = "<audio>") -> int:
        """Encoder frames (after windowing) for a clip of `num_samples` samples."""
        return sum(
            math.ceil((e - s) / self.samples_per_frame) for s, e in self.split_windows(num_samples, name)
        )

    def mels(self, arrays: list[np.ndarray], names: list[str] | None = None) -> MelBatch:
        """Log-mel spectrograms for a batch of clips, each padded only to the longest window.

        Args:
            arrays: mono float32 clips at the encoder's sample rate.
            names: clip names for errors.

        Returns:
            A MelBatch.
        """
        names = names or [f"<audio {i}>" for i in range(len(arrays))]
        windows, frames, per_clip = [], [], []
        for array, name in zip(arrays, names, strict=True):
            ranges = self.split_windows(len(array), name)
            per_clip.append(len(ranges))
            for s, e in ranges:
                windows.append(array[s:e])
                frames.append(math.ceil((e - s) / self.samples_per_frame))
        # Zero-pad every window to the same whole number of encoder frames, plus one frame of silence
        # (unless that would exceed the window) so the last valid frame's STFT and conv kernels see what
        # they see in the stock 30-s input: its log-mels and conv front end then match stock ones
        # exactly, and a clip's features do not depend on how much padding its batch adds.
        extra = 1 if max(frames) < self.max_frames else 0
        padded_len = (max(frames) + extra) * self.samples_per_frame
        batch = [np.pad(w, (0, padded_len - len(w))) for w in windows]
        mel = self.feature_extractor(
            batch, sampling_rate=self.sample_rate, padding="longest", return_tensors="pt"
        ).input_features
        return MelBatch(mel, torch.tensor(frames), torch.tensor(per_clip))

    # ---- forward ----

    def encode_windows(self, input_features: torch.Tensor, window_frames: torch.Tensor) -> EncoderOutput:
        """Run the encoder on windows of at most 30 s.

        Args:
            input_features: Shapes: (windows, num_mel_bins, mel_frames), mel_frames <= 3000.
            window_frames: Shapes: (windows,), valid encoder frames per window.

        Returns:
            EncoderOutput with features (windows, num_taps, mel_frames // 2, hidden).
        """
        enc = self.encoder
        x = input_features.to(dtype=enc.conv1.weight.dtype, device=enc.conv1.weight.device)
        x = nn.functional.gelu(enc.conv1(x))
        x = nn.functional.gelu(enc.conv2(x))
        x = x.permute(0, 2, 1)  # (windows, frames, hidden)
        frames = x.shape[1]
        if frames > self.max_frames:
            raise ValueError(f"encoder input of {frames} frames exceeds the {self.max_frames}-frame window")
        # The positional embedding sliced to the actual length: this is what makes short clips cheap.
        x = x + enc.embed_positions.weight[:frames]
        x = nn.functional.dropout(x, p=enc.dropout, training=enc.training)
        mask = torch.arange(frames, device=x.device)[None, :] < window_frames.to(x.device)[:, None]
        # Additive attention mask (windows, 1, 1, frames): padded keys get the dtype's minimum.
        attn = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        attn = attn.masked_fill(~mask, torch.finfo(x.dtype).min)[:, None, None, :]
        taps = {0: x} if 0 in self.layers else {}
        last = max(self.layers)
        for i, layer in enumerate(enc.layers[:last], start=1):
            x = layer(x, attn)
            if i in self.layers:
                taps[i] = enc.layer_norm(x) if i == len(enc.layers) else x
        feats = torch.stack([taps[i] for i in self.layers], dim=1)
        return EncoderOutput(feats, mask)

    def forward(
        self, input_features: torch.Tensor, window_frames: torch.Tensor, windows_per_clip: torch.Tensor
    ):
        """Encode a batch of clips (windows reassembled per clip).

        Args:
            input_features: Shapes: (windows, num_mel_bins, mel_frames).
            window_frames: Shapes: (windows,).
            windows_per_clip: Shapes: (clips,).

        Returns:
            EncoderOutput with features (clips, num_taps, frames, hidden) and mask (clips, frames).
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.encode_windows(input_features, window_frames)
        if bool((windows_per_clip == 1).all()):
            return out
        # Concatenate each clip's windows' valid frames, then re-pad across clips.
        per_window = [out.features[w, :, : int(n)] for w, n in enumerate(window_frames)]
        clips, start = [], 0
        for count in windows_per_clip.tolist():
            clips.append(torch.cat(per_window[start : start + count], dim=1))
            start += count
        return pad_features(clips)


def pad_features(clips: list[torch.Tensor]) -> EncoderOutput:
    """Pad per-clip features to a batch.

    Args:
        clips: one tensor per clip. Shapes: (num_taps, frames_i, hidden).

    Returns:
        EncoderOutput with features (clips, num_taps, max_frames, hidden) and mask (clips, max_frames).
    """
    lengths = [c.shape[1] for c in clips]
    longest = max(lengths)
    feats = clips[0].new_zeros((len(clips), clips[0].shape[0], longest, clips[0].shape[2]))
    mask = torch.zeros((len(clips), longest), dtype=torch.bool, device=clips[0].device)
    for i, (c, n) in enumerate(zip(clips, lengths, strict=True)):
        feats[i, :, :n] = c
        mask[i, :n] = True
    return EncoderOutput(feats, mask)


def load_encoder(
    source: str,
    layers: list[int] | None = None,
    num_taps: int = 4,
    frozen: bool = True,
    long_audio: str = "window",
    dtype: str | None = None,
) -> WhisperFeatureEncoder:
    """Load a Whisper model from a source and keep its encoder.

    Args:
        source: hub id, local path or packaged name (see `speechllm.sources`).
        layers, num_taps, frozen, long_audio: see `WhisperFeatureEncoder`.
        dtype: torch dtype name (e.g. "bfloat16"); None keeps the loaded dtype.

    Returns:
        A WhisperFeatureEncoder (the decoder is dropped).
    """
    whisper, processor = load_whisper(source, dtype=dtype)
    encoder = whisper.model.encoder
    return WhisperFeatureEncoder(
        encoder,
        processor.feature_extractor,
        layers=layers,
        num_taps=num_taps,
        frozen=frozen,
        long_audio=long_audio,
        source=source,
    )
