"""Modality adapters: tapped encoder features -> embeddings in the LLM's input space.

Every adapter takes the encoder's tapped features of a padded batch and returns embeddings of the
LLM's width plus a mask, and can say how many embeddings a clip of `n` frames becomes
(`output_length`), which the collator needs to reserve the audio slots in the prompt. Widths
(`in_dim` = encoder hidden size, `out_dim` = LLM hidden size, `num_taps`) and the LLM's token-embedding
scale (`embed_rms`) are passed in code from the loaded models; the YAMLs in `conf/model/adapter/` only
hold the adapter's own hyper-parameters.

Adding an adapter: a class here with the same `forward`/`output_length` contract, its dotted path in
`speechllm.config.ALLOWED_TARGETS`, and a YAML in `conf/model/adapter/`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LayerMix(nn.Module):
    """Learned softmax-weighted sum over tapped layers (initialised to the plain mean).

    Shapes: (batch, num_taps, ...) -> (batch, ...).
    """

    def __init__(self, num_taps: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.logits, dim=0).to(x.dtype)
        return torch.einsum("k,bk...->b...", w, x)


class OutputNorm(nn.Module):
    """RMS-normalise each output embedding, with a learned gain that starts at the LLM's embedding scale.

    A plain linear projection gives embeddings of its own scale, unrelated to the LLM's (Ultravox also
    ends its projector with an RMSNorm). In the demo, the trained Q-Former without it wrote audio
    embeddings of RMS 0.97 per dimension into a frozen SmolLM2-135M whose token embeddings have RMS
    0.13: each audio slot had seven times the norm of a text token in the residual stream.

    Args:
        dim: embedding width (the LLM's hidden size).
        init_rms: the gain's starting value; None: 1.0.
    """

    def __init__(self, dim: int, init_rms: float | None = None):
        super().__init__()
        self.norm = nn.RMSNorm(dim, elementwise_affine=False)
        self.gain = nn.Parameter(torch.full((dim,), 1.0 if init_rms is None else float(init_rms)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.gain


def _output_norm(enabled: bool, dim: int, embed_rms: float | None) -> nn.Module:
    return OutputNorm(dim, embed_rms) if enabled else nn.Identity()


class QFormerLayer(nn.TransformerDecoderLayer):
    """`nn.TransformerDecoderLayer` whose cross-attention projects keys and values separately.

    The stock layer runs `nn.MultiheadAttention`, which projects the encoder frames to keys and values
    in one packed product and then copies the result into head order; in the backward pass it fills
    and copies a tensor of that size again. The Q-Former's frames outnumber its queries about ten to
    one, so on the demo's alignment warm-up (CPU) those copies were 16% of a step, and this layer
    takes 0.23 s per step where the stock one takes 0.26 (medians of alternating blocks). Same parameters and state-dict keys as the
    stock layer (checkpoints load either way); the outputs agree to float rounding (tested).
    """

    def _mha_block(self, x, mem, attn_mask, key_padding_mask, is_causal=False):
        mha = self.multihead_attn
        if attn_mask is not None or is_causal or not mha._qkv_same_embed_dim:
            return super()._mha_block(x, mem, attn_mask, key_padding_mask, is_causal)
        e, heads = mha.embed_dim, mha.num_heads
        w, b = mha.in_proj_weight, mha.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if b is None else b.split(e)

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # (batch, len, e) -> (batch, heads, len, e / heads)
            return t.unflatten(-1, (heads, e // heads)).transpose(1, 2)

        q = heads_first(nn.functional.linear(x, w[:e], b_q))
        k = heads_first(nn.functional.linear(mem, w[e : 2 * e], b_k))
        v = heads_first(nn.functional.linear(mem, w[2 * e :], b_v))
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # True = attend
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=mha.dropout if self.training else 0.0
        )
        return self.dropout2(mha.out_proj(out.transpose(1, 2).flatten(2)))


class QFormerAdapter(nn.Module):
    """DeSTA2's Q-Former: learned queries per tapped layer read that layer through a shared transformer.

    Each tapped layer has its own set of learned queries; one shared stack of transformer decoder layers
    (self-attention over the queries, cross-attention to the layer's frames, feed-forward) turns them
    into `num_queries` vectors per layer; a learned softmax mixes the layers; a projection maps to the
    LLM's width. The output length is `num_queries` whatever the clip's length.

    Args:
        in_dim: encoder hidden size.
        out_dim: LLM hidden size.
        num_taps: number of tapped encoder layers.
        num_queries: learned queries per tapped layer (DeSTA2: 64).
        num_layers: transformer layers (DeSTA2: 4).
        hidden_size: the Q-Former's width.
        num_heads: attention heads.
        ffn_mult: feed-forward width as a multiple of `hidden_size`.
        dropout: dropout inside the transformer.
        output_norm: end with an `OutputNorm` (off by default so checkpoints made without it still load;
            the YAMLs turn it on).
        embed_rms: the LLM's token-embedding RMS, the `OutputNorm` gain's starting value.

    Shapes:
        features (batch, num_taps, frames, in_dim), mask (batch, frames)
        -> embeds (batch, num_queries, out_dim), mask (batch, num_queries)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_taps: int,
        num_queries: int = 16,
        num_layers: int = 2,
        hidden_size: int = 256,
        num_heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.0,
        output_norm: bool = False,
        embed_rms: float | None = None,
    ):
        super().__init__()
        self.num_queries = num_queries
        self.in_norm = nn.LayerNorm(in_dim)
        self.in_proj = nn.Linear(in_dim, hidden_size)
        self.queries = nn.Parameter(torch.randn(num_taps, num_queries, hidden_size) * 0.02)
        layer = QFormerLayer(
            hidden_size,
            num_heads,
            dim_feedforward=ffn_mult * hidden_size,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(hidden_size))
        self.mix = LayerMix(num_taps)
        self.out_proj = nn.Linear(hidden_size, out_dim)
        self.out_norm = _output_norm(output_norm, out_dim, embed_rms)

    def output_length(self, num_frames: int) -> int:
        """Embeddings produced for a clip of `num_frames` encoder frames."""
        return self.num_queries

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k, t, _ = features.shape
        memory = self.in_proj(self.in_norm(features)).flatten(0, 1)  # (b*k, t, hidden)
        queries = self.queries.unsqueeze(0).expand(b, -1, -1, -1).flatten(0, 1)  # (b*k, q, hidden)
        pad = (~mask).repeat_interleave(k, dim=0)  # (b*k, t), True = ignore
        out = self.transformer(queries, memory, memory_key_padding_mask=pad)
        out = self.mix(out.unflatten(0, (b, k)))  # (b, q, hidden)
        embeds = self.out_norm(self.out_proj(out))
        return embeds, torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)


class StackMLPAdapter(nn.Module):
    """Ultravox's projector: mix the tapped layers, stack `stack` consecutive frames, then an MLP.

    Args:
        in_dim: encoder hidden size.
        out_dim: LLM hidden size.
        num_taps: number of tapped encoder layers (mixed by a learned softmax first).
        stack: frames stacked into one embedding (ultravox: 8, i.e. 50 Hz -> 6.25 Hz).
        hidden_size: MLP hidden width.
        output_norm: end with an `OutputNorm` (see `QFormerAdapter`).
        embed_rms: the LLM's token-embedding RMS, the `OutputNorm` gain's starting value.

    Shapes:
        features (batch, num_taps, frames, in_dim), mask (batch, frames)
        -> embeds (batch, ceil(frames / stack), out_dim), mask (batch, ceil(frames / stack))
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_taps: int,
        stack: int = 8,
        hidden_size: int = 1024,
        output_norm: bool = False,
        embed_rms: float | None = None,
    ):
        super().__init__()
        self.stack = stack
        self.mix = LayerMix(num_taps)
        self.in_norm = nn.LayerNorm(in_dim * stack)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim * stack, hidden_size), nn.GELU(), nn.Linear(hidden_size, out_dim)
        )
        self.out_norm = _output_norm(output_norm, out_dim, embed_rms)

    def output_length(self, num_frames: int) -> int:
        """Embeddings produced for a clip of `num_frames` encoder frames."""
        return math.ceil(num_frames / self.stack)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.mix(features) * mask[..., None]  # zero padding so a clip's output ignores its batch mates
        b, t, d = x.shape
        extra = (-t) % self.stack
        x = nn.functional.pad(x, (0, 0, 0, extra))
        x = x.reshape(b, (t + extra) // self.stack, self.stack * d)
        lengths = (mask.sum(1) + self.stack - 1) // self.stack
        out_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        return self.out_norm(self.mlp(self.in_norm(x))), out_mask


class ConvAdapter(nn.Module):
    """Strided 1-D convolutions over time (each halves the frame rate with stride 2), then a projection.

    Args:
        in_dim: encoder hidden size.
        out_dim: LLM hidden size.
        num_taps: number of tapped encoder layers (mixed by a learned softmax first).
        channels: convolution channels.
        num_layers: number of strided convolutions.
        kernel_size: convolution kernel (odd).
        stride: stride of each convolution.
        output_norm: end with an `OutputNorm` (see `QFormerAdapter`).
        embed_rms: the LLM's token-embedding RMS, the `OutputNorm` gain's starting value.

    Shapes:
        features (batch, num_taps, frames, in_dim), mask (batch, frames)
        -> embeds (batch, frames', out_dim), mask (batch, frames') with frames' = output_length(frames)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_taps: int,
        channels: int = 256,
        num_layers: int = 2,
        kernel_size: int = 3,
        stride: int = 2,
        output_norm: bool = False,
        embed_rms: float | None = None,
    ):
        super().__init__()
        self.mix = LayerMix(num_taps)
        self.in_norm = nn.LayerNorm(in_dim)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, kernel_size // 2
        dims = [in_dim] + [channels] * num_layers
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, stride=stride, padding=self.padding)
            for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.out_proj = nn.Linear(channels, out_dim)
        self.out_norm = _output_norm(output_norm, out_dim, embed_rms)

    def _conv_len(self, n):
        return (n + 2 * self.padding - self.kernel_size) // self.stride + 1

    def output_length(self, num_frames: int) -> int:
        """Embeddings produced for a clip of `num_frames` encoder frames."""
        for _ in self.convs:
            num_frames = self._conv_len(num_frames)
        return num_frames

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.in_norm(self.mix(features))
        lengths = mask.sum(1)
        x = x.transpose(1, 2)  # (batch, channels, frames)
        for conv in self.convs:
            # Zero the padding before each convolution so a clip's output ignores its batch mates.
            valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
            x = nn.functional.gelu(conv(x * valid[:, None, :]))
            lengths = self._conv_len(lengths)
        out_mask = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
        return self.out_norm(self.out_proj(x.transpose(1, 2))), out_mask
