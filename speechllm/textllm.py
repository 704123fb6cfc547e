"""The text LLM: what it reads, batched generation, answer scoring and lazy loading.

Every stage that runs the frozen text LLM goes through this module: target generation
(`speechllm.data.targets`), text replay (`speechllm.data.replay`), token filtering
(`speechllm.data.token_filter`), the evaluation's ceiling and retention checks (`speechllm.eval`), the
distillation teacher (`speechllm.train.trainer`) and the benchmarks. :func:`description_messages` is
the single place that defines what the LLM reads for a clip.

Generation is left-padded and length-sorted (:func:`generate_texts`, or vLLM on GPU machines);
scoring is right-padded (:func:`answer_logprobs`, :func:`target_token_probs`), so each real token keeps
its natural position and a model sees identical inputs whatever it is batched with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

logger = logging.getLogger(__name__)

# The LLM never hears the audio: it reads a description. The system turn gives it a listener's
# role, so targets read like perception ("A woman says ...") rather than commentary on a text ("The
# description says ..."), which the speech model could not ground in audio; and asks for short
# answers, which keeps a small LLM from drifting into invented detail. Chosen by reading SmolLM2-135M
# answers to several phrasings (longer role descriptions made it talk about "the description").
DEFAULT_SYSTEM = "You are a helpful assistant who can hear audio. Keep answers short."


def description_messages(description: str, instruction: str, system: str | None = None) -> list[dict]:
    """The chat the frozen text LLM reads for one clip.

    Args:
        description: the clip's description text (from the describe stage).
        instruction: the request about the audio.
        system: system prompt; None uses :data:`DEFAULT_SYSTEM`, "" sends no system turn (the
            chat template may then insert its own default).

    Returns:
        A list of ``{"role", "content"}`` messages, ready for ``tokenizer.apply_chat_template``.

    Raises:
        ValueError: empty description or instruction.
    """
    if not isinstance(description, str) or not description.strip():
        raise ValueError("description_messages: the description is empty")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("description_messages: the instruction is empty")
    system = DEFAULT_SYSTEM if system is None else system
    messages = [{"role": "system", "content": system}] if system else []
    messages.append(
        {
            "role": "user",
            "content": f"You hear this audio clip: {description.strip()}\n\n{instruction.strip()}",
        }
    )
    return messages


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """Render messages through the tokenizer's chat template, ready for the assistant's answer.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: ``{"role", "content"}`` dicts.

    Returns:
        The prompt text, ending with the assistant-turn header. Tokenize it with
        ``add_special_tokens=False``: the template already holds any BOS it wants.
    """
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------
# Batched generation (shared by targets, replay and the benchmark)


@dataclass
class Generation:
    """One generated continuation.

    Attributes:
        text: decoded new text, special tokens removed, stripped.
        num_tokens: new tokens up to (not including) the stop token.
        truncated: True when no stop token came within ``max_new_tokens``.
        token_ids: the new token ids up to and including the stop token (the exact continuation,
            for scoring it under another model).
    """

    text: str
    num_tokens: int
    truncated: bool
    token_ids: list[int] = field(default_factory=list)


@dataclass
class GenerationConfig:
    """Decoding settings; recorded verbatim in each row's ``target_generation``.

    Attributes:
        max_new_tokens: cap on new tokens per answer.
        do_sample: False is greedy decoding.
        temperature, top_p, top_k: sampling settings (top_k 0 disables it; used only when sampling).
        repetition_penalty: 1.0 is off.
        seed: seeds sampling per batch (from the batch's prompts), so reruns and shards agree.
        batch_size: prompts per forward pass (does not change what is generated, up to float noise).
    """

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def check(self, where: str) -> None:
        """Raise ValueError naming `where` (e.g. "target.generation") for a value out of range."""
        problems = [
            f"{name}={value} must be >= 1"
            for name, value in (("max_new_tokens", self.max_new_tokens), ("batch_size", self.batch_size))
            if value < 1
        ]
        if self.temperature <= 0:
            problems.append(f"temperature={self.temperature} must be > 0 (do_sample=false is greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0 (0 disables it)")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0")
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))

    def settings(self) -> dict:
        """The settings that determine the output (batch size excluded)."""
        out = dataclasses.asdict(self)
        out.pop("batch_size")
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k", "seed"):
                out.pop(key)
        return out


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant (or user) turn: EOS plus the template's end-of-turn token.

    Chat templates close a turn with their own token (``<|im_end|>``, ``<|eot_id|>``), which is not
    always the tokenizer's EOS; it is found by rendering a turn and reading the special token that
    follows the content.

    Args:
        tokenizer: a tokenizer with a chat template.

    Returns:
        Sorted distinct token ids.
    """
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    sentinel = "\u2063SENTINEL\u2063"
    text = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False)
    after = text.split(sentinel, 1)[1] if sentinel in text else ""
    if after:
        first = tokenizer(after, add_special_tokens=False).input_ids[:1]
        if first and first[0] in set(tokenizer.all_special_ids):
            ids.add(int(first[0]))
    return sorted(ids)


def _batch_seed(seed: int, salt: str, start: int, prompts: list[list[int]]) -> int:
    # Derived from the batch itself (and the caller's salt), not from global RNG state, so the same
    # batch samples the same text in any run or shard; the salt and position tell identical prompts
    # (Magpie's) apart.
    h = hashlib.sha256(f"{seed}|{salt}|{start}".encode())
    for ids in prompts:
        h.update(b"\x00" + ",".join(map(str, ids)).encode())
    return int.from_bytes(h.digest()[:4], "big")


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


@dataclass
class PrefixGroup:
    """Prompts that start with the same tokens: the first `shared` tokens are run once for all of them.

    Attributes:
        shared: length of the shared prefix (at most each prompt's length minus one, so every row has
            a token of its own after it).
        rows: indices of the prompts in the group.
    """

    shared: int
    rows: list[int]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def shared_prefix_groups(
    encoded: Sequence[Sequence[int]], max_rows: int, min_share: float = 0.5
) -> list[PrefixGroup]:
    """Group prompts whose leading tokens agree, so their common prefix is computed once.

    Prompts are sorted by their token ids, so prompts with a common prefix sit side by side. A prompt
    joins its neighbour's group when that computes fewer prompt tokens than running it apart (a
    newcomer that shortens the group's prefix costs every member those tokens) and the prefix still
    covers `min_share` of the shortest member: the three questions about one clip share its system
    turn and description (about 85% of their tokens) and are grouped; prompts about different clips
    share the system turn (about 25%) and are not, so batches stay length-sorted.

    Args:
        encoded: token ids per prompt.
        max_rows: the most prompts in one group (the generation batch size).
        min_share: the least shared fraction of the shortest member's tokens.

    Returns:
        Groups covering every prompt once; a prompt that shares with no other is a group of one
        (its prefix all but its last token).
    """

    def cost(shared: int, lengths: list[int]) -> int:  # prompt tokens run for a group
        return shared + sum(n - shared for n in lengths)

    order = sorted(range(len(encoded)), key=lambda i: (list(encoded[i]), i))
    groups: list[PrefixGroup] = []
    for i in order:
        ids = encoded[i]
        if groups and len(groups[-1].rows) < max_rows:
            last = groups[-1]
            lengths = [len(encoded[r]) for r in last.rows]
            shared = min(last.shared, common_prefix_length(encoded[last.rows[0]], ids), len(ids) - 1)
            merged = cost(shared, [*lengths, len(ids)])
            if shared >= max(1, min_share * min(*lengths, len(ids))) and merged <= cost(
                last.shared, lengths
            ) + len(ids):
                last.shared = shared
                last.rows.append(i)
                continue
        groups.append(PrefixGroup(shared=len(ids) - 1, rows=[i]))
    return groups


def _generation_batches(
    encoded: list[list[int]], batch_size: int, share_prefix: bool
) -> list[list[PrefixGroup]]:
    """Batches of prompt groups: length-sorted, at most `batch_size` prompts each. Without a shared
    prefix to reuse, every prompt is its own group with nothing shared (`shared` 0)."""
    if share_prefix:
        groups = shared_prefix_groups(encoded, batch_size)
        if any(len(g.rows) > 1 for g in groups) and all(g.shared >= 1 for g in groups):
            groups.sort(key=lambda g: (g.shared, max(len(encoded[r]) for r in g.rows), g.rows[0]))
            batches: list[list[PrefixGroup]] = [[]]
            for g in groups:
                if sum(len(x.rows) for x in batches[-1]) + len(g.rows) > batch_size:
                    batches.append([])
                batches[-1].append(g)
            return batches
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    return [
        [PrefixGroup(0, [i]) for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)
    ]


def prefill_shared(model, prefix_mask: torch.Tensor, group_of_row: torch.Tensor, **prefix):
    """The KV cache of each group's left-padded prefix (`input_ids=` or `inputs_embeds=`), one copy per
    row: row r belongs to group `group_of_row[r]`. Positions count real tokens only, as `generate` counts
    them from the attention mask."""
    positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        **prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    out.cache.batch_select_indices(group_of_row)
    return out.cache


# Prompt tokens per prefill forward pass in `_greedy_batch`: prefill runs at about 450-520 tokens/s on two
# CPU cores up to ~12k tokens a pass and falls to ~370 at 23k (SmolLM2-135M, 120-token prompts), so a large
# decoding batch is prefilled in parts of about this size.
PREFILL_TOKENS = 8192


class RoomyLayer(DynamicLayer):
    """A key/value cache layer with room for the tokens still to come.

    `DynamicLayer` concatenates every new token onto its cache, copying the whole cache at each decoding
    step (about a tenth of a SmolLM2 decoding step on CPU); this layer writes the token into spare room.
    `keys` and `values` are views of the filled part, so the model's masks read their length as usual.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
        super().__init__()
        self.key_room, self.value_room = keys, values
        self.filled = filled
        self.device = keys.device
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self.key_room[:, :, : self.filled]
        self.values = self.value_room[:, :, : self.filled]

    def update(self, key_states, value_states, *args, **kwargs):
        new = key_states.shape[-2]
        if self.filled + new > self.key_room.shape[-2]:
            raise RuntimeError(f"RoomyLayer: no room for {new} more tokens after {self.filled}")
        self.key_room[:, :, self.filled : self.filled + new] = key_states
        self.value_room[:, :, self.filled : self.filled + new] = value_states
        self.filled += new
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_room, self.value_room = self.key_room[indices], self.value_room[indices]
        self._views()


def _merged_cache(parts: list[tuple[Cache, torch.Tensor]], room: int) -> tuple[Cache, torch.Tensor]:
    """One cache of `RoomyLayer`s for the rows of several prefilled parts (each a cache and its attention
    mask), left-padded to the longest part, with `room` free positions after it; and the rows' attention
    mask over every position, the free ones set (each decoding step uses one more)."""
    width = max(mask.shape[1] for _, mask in parts)
    rows = sum(mask.shape[0] for _, mask in parts)
    layers = []
    for layer_index, layer in enumerate(parts[0][0].layers):
        b, heads, _, dim = layer.keys.shape
        keys = layer.keys.new_zeros(rows, heads, width + room, dim)
        values = torch.zeros_like(keys)
        start = 0
        for cache, mask in parts:
            part = cache.layers[layer_index]
            n, length = mask.shape
            keys[start : start + n, :, width - length : width] = part.keys
            values[start : start + n, :, width - length : width] = part.values
            start += n
        layers.append(RoomyLayer(keys, values, width))
    mask = torch.ones(rows, width + room, dtype=parts[0][1].dtype, device=parts[0][1].device)
    start = 0
    for _, part_mask in parts:
        n, length = part_mask.shape
        mask[start : start + n, : width - length] = 0
        mask[start : start + n, width - length : width] = part_mask
        start += n
    return Cache(layers=layers), mask


def _prefill(model, groups: list[PrefixGroup], encoded: list[list[int]], pad_id: int, device):
    """Run the prompts of `groups`: the stem all of them share (the system turn and the request's opening
    words) once, each group's shared prefix once, then each row's own tokens. Returns the greedy first
    token, the cache, the attention mask and the position of each row's last prompt token."""
    if groups[0].shared == 0:
        input_ids, attention = left_pad([encoded[g.rows[0]] for g in groups], pad_id)
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        return out.logits[:, -1].argmax(-1), out.cache, attention, positions[:, -1]
    prefixes = [encoded[g.rows[0]][: g.shared] for g in groups]
    # Every group keeps a token of its own after the stem, so no row of the next pass is all padding.
    stem = (
        min(min(common_prefix_length(prefixes[0], p), len(p) - 1) for p in prefixes) if len(groups) > 1 else 0
    )
    cache = None
    if stem:
        cache = model(input_ids=torch.tensor([prefixes[0][:stem]], device=device), use_cache=True,
                      logits_to_keep=1).cache  # fmt: skip
        cache.batch_select_indices(torch.zeros(len(groups), dtype=torch.long, device=device))
    rest_ids, rest_mask = left_pad([p[stem:] for p in prefixes], pad_id)
    prefix_mask = torch.cat([torch.ones(len(groups), stem, dtype=torch.long), rest_mask], dim=1).to(device)
    positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
    cache = model(input_ids=rest_ids.to(device), attention_mask=prefix_mask, position_ids=positions[:, stem:],
                  cache=cache, use_cache=True, logits_to_keep=1).cache  # fmt: skip
    group_of_row = torch.tensor([k for k, g in enumerate(groups) for _ in g.rows], device=device)
    cache.batch_select_indices(group_of_row)
    own_ids, own_mask = left_pad([encoded[i][g.shared :] for g in groups for i in g.rows], pad_id)
    attention = torch.cat([prefix_mask[group_of_row], own_mask.to(device)], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    own = own_ids.shape[1]
    out = model(input_ids=own_ids.to(device), attention_mask=attention, position_ids=positions[:, -own:],
                cache=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
    return out.logits[:, -1].argmax(-1), out.cache, attention, positions[:, -1]


def _prefill_parts(groups: list[PrefixGroup], encoded: list[list[int]]) -> list[list[PrefixGroup]]:
    """Consecutive runs of groups whose padded prompts hold about `PREFILL_TOKENS` tokens each."""
    parts: list[list[PrefixGroup]] = [[]]
    rows = width = 0
    for g in groups:
        longest = max(len(encoded[i]) for i in g.rows)
        if parts[-1] and (rows + len(g.rows)) * max(width, longest) > PREFILL_TOKENS:
            parts.append([])
            rows = width = 0
        parts[-1].append(g)
        rows, width = rows + len(g.rows), max(width, longest)
    return parts


def _greedy_batch(
    model, groups, encoded, pad_id: int, max_new_tokens: int, stops: list[int]
) -> list[list[int]]:
    """Greedy continuations of one batch of prompt groups, rows in group order, each ending with its stop
    token (or at `max_new_tokens`).

    `transformers`' `generate` keeps a finished row in the batch until the longest answer ends; here
    finished rows leave the batch (once they are a quarter of it), so the rows still talking carry most
    of a step's cost (on the demo's targets 69 of 192 greedy answers run to the 32-token cap while the
    others average 13 tokens). The batch is prefilled in parts of about `PREFILL_TOKENS` tokens, merged
    into one cache with room for the answers.
    """
    device = next(model.parameters()).device
    firsts, parts, last_positions = [], [], []
    for part in _prefill_parts(groups, encoded):
        first, cache, attention, last = _prefill(model, part, encoded, pad_id, device)
        firsts.append(first)
        parts.append((cache, attention))
        last_positions.append(last)
    cache, mask = _merged_cache(parts, max_new_tokens)
    filled = mask.shape[1] - max_new_tokens
    token, position = torch.cat(firsts), torch.cat(last_positions)
    held = torch.arange(len(token), device=device)  # the batch's rows still in the cache
    done = torch.zeros(len(token), dtype=torch.bool, device=device)
    stop = torch.tensor(stops, device=device)
    tokens: list[list[int]] = [[] for _ in range(len(token))]
    for step in range(max_new_tokens):
        for row, t, finished in zip(held.tolist(), token.tolist(), done.tolist(), strict=True):
            if not finished:
                tokens[row].append(t)
        done |= torch.isin(token, stop)
        if step == max_new_tokens - 1 or done.all():
            break
        # Dropping rows copies the cache, so finished rows leave in bulk: once they are a quarter of it.
        if done.sum() * 4 >= len(done):
            keep = (~done).nonzero()[:, 0]
            held, token, position, mask, done = (t[keep] for t in (held, token, position, mask, done))
            cache.batch_select_indices(keep)
        position = position + 1
        out = model(input_ids=token[:, None], attention_mask=mask[:, : filled + step + 1],
                    position_ids=position[:, None], cache=cache, use_cache=True)  # fmt: skip
        token = out.logits[:, -1].argmax(-1)
    return tokens


def _own_greedy_fits(model, gen: GenerationConfig) -> bool:
    """Whether `_greedy_batch` decodes for this model and these settings: greedy, no repetition penalty,
    and a cache of plain full-attention layers (sliding-window and other layer kinds go to `generate`)."""
    if gen.do_sample or gen.repetition_penalty != 1.0:
        return False
    config = getattr(model, "config", None)
    if config is None:
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


@torch.inference_mode()
def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    gen: GenerationConfig,
    salt: str = "",
    share_prefix: bool = True,
    hf_generate: bool = False,
) -> list[Generation]:
    """Generate a continuation for each prompt, in left-padded, length-sorted batches.

    Prompts are sorted by token length so each batch pads little; results come back in input order.
    Prompts that begin alike (several questions about one clip's description; one prompt sampled
    several times) are grouped, and their common prefix is run once per group and its KV cache copied
    to each row (:func:`shared_prefix_groups`): prefill is most of the cost of short answers. Greedy
    decoding drops each row from the batch when it stops (:func:`_greedy_batch`); sampling and
    repetition penalties go through `transformers`' `generate`.

    Args:
        model: a causal LM (eval mode).
        tokenizer: its tokenizer; must have a pad token or an EOS to pad with.
        prompts: fully rendered prompt texts (tokenized with ``add_special_tokens=False``).
        gen: decoding settings.
        salt: mixed into the sampling seed; give different calls with identical prompts different
            salts (e.g. the chunk's first key) so they do not sample identical text.
        share_prefix: run common prefixes once (greedy answers equal the unshared ones up to float
            noise; sampled ones differ, as the batches do).
        hf_generate: decode greedy answers with `transformers`' `generate` too (the benchmark's
            reference).

    Returns:
        One :class:`Generation` per prompt, in input order.

    Shapes:
        each batch: input_ids/attention_mask (B, L_max), output (B, L_max + new).
    """
    if not prompts:
        return []
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("generate_texts: a prompt tokenizes to nothing")
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    own_greedy = not hf_generate and _own_greedy_fits(model, gen)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gen.max_new_tokens,
        do_sample=gen.do_sample,
        eos_token_id=stops,
        pad_token_id=pad_id,
        repetition_penalty=gen.repetition_penalty,
    )
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
    else:
        # Neutralise sampling defaults a checkpoint's generation_config may carry (they warn otherwise).
        kwargs.update(temperature=None, top_p=None, top_k=None)

    results: list[Generation | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    stop_set = set(stops)
    start = 0
    for groups in _generation_batches(encoded, gen.batch_size, share_prefix):
        idx = [i for g in groups for i in g.rows]
        batch = [encoded[i] for i in idx]
        if gen.do_sample:
            torch.manual_seed(_batch_seed(gen.seed, salt, start, batch))
        start += len(idx)
        if own_greedy:
            new = _greedy_batch(model, groups, encoded, pad_id, gen.max_new_tokens, stops)
        elif groups[0].shared == 0:
            input_ids, attention = left_pad(batch, pad_id)
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
            )
            new = out[:, input_ids.shape[1] :].tolist()
        else:
            # [left-padded shared prefix | left-padded own tokens]: padding in the middle is masked out
            # and positions count real tokens only, so each row reads what it would read alone.
            prefix_ids, prefix_mask = left_pad([encoded[g.rows[0]][: g.shared] for g in groups], pad_id)
            group_of_row = torch.tensor([k for k, g in enumerate(groups) for _ in g.rows])
            own_ids, own_mask = left_pad([encoded[i][g.shared :] for g in groups for i in g.rows], pad_id)
            input_ids = torch.cat([prefix_ids[group_of_row], own_ids], dim=1).to(device)
            attention = torch.cat([prefix_mask[group_of_row], own_mask], dim=1).to(device)
            cache = prefill_shared(
                model, prefix_mask.to(device), group_of_row.to(device), input_ids=prefix_ids.to(device)
            )
            out = model.generate(input_ids=input_ids, attention_mask=attention, cache=cache, **kwargs)
            new = out[:, input_ids.shape[1] :].tolist()
        for i, tokens in zip(idx, new, strict=True):
            end = next((k for k, t in enumerate(tokens) if t in stop_set), None)
            kept = tokens if end is None else tokens[:end]
            text = tokenizer.decode(kept, skip_special_tokens=True).strip()
            with_stop = tokens if end is None else tokens[: end + 1]
            results[i] = Generation(
                text=text, num_tokens=len(kept), truncated=end is None, token_ids=with_stop
            )
    return results  # type: ignore[return-value]


def load_vllm(source: str, seed: int = 0, dtype: str | None = None):
    """Start a vLLM engine for a model source (GPU machines).

    Args:
        source: model source (resolved with ``speechllm.sources.resolve_source``).
        seed: engine seed.
        dtype: vLLM dtype string, or None for "auto".

    Returns:
        A ``vllm.LLM``.

    Raises:
        RuntimeError: vllm is not installed.
    """
    try:
        from vllm import LLM
    except ImportError as err:
        raise RuntimeError(
            "target.backend=vllm needs the `vllm` package (GPU machines only): `pip install vllm`, "
            "or use target.backend=hf"
        ) from err
    from speechllm.sources import resolve_source

    return LLM(model=resolve_source(source), seed=seed, dtype=dtype or "auto")


def generate_vllm(llm, prompts: list[str], gen: GenerationConfig) -> list[Generation]:
    """Generate with a vLLM engine; same inputs and outputs as :func:`generate_texts`.

    Prompts go in as token ids (``add_special_tokens=False``), so vLLM sees exactly the rendered
    chat text and adds no second BOS. vLLM schedules its own batches (``gen.batch_size`` unused) and
    seeds sampling per request, so sampled text differs from the ``hf`` backend's.

    Args:
        llm: a ``vllm.LLM`` (see :func:`load_vllm`).
        prompts: rendered prompt texts.
        gen: decoding settings.

    Returns:
        One :class:`Generation` per prompt, in input order.
    """
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    stops = stop_token_ids(tokenizer)
    params = SamplingParams(
        max_tokens=gen.max_new_tokens,
        temperature=gen.temperature if gen.do_sample else 0.0,
        top_p=gen.top_p if gen.do_sample else 1.0,
        top_k=(gen.top_k or -1) if gen.do_sample else -1,
        repetition_penalty=gen.repetition_penalty,
        seed=gen.seed if gen.do_sample else None,
        stop_token_ids=stops,
    )
    inputs = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False).input_ids} for p in prompts]
    results = []
    for o in llm.generate(inputs, params):
        out = o.outputs[0]
        n = len([t for t in out.token_ids if t not in stops])
        results.append(Generation(out.text.strip(), n, out.finish_reason == "length", list(out.token_ids)))
    return results


# ---------------------------------------------------------------------------------------------
# Chat generation and answer scoring


def greedy_chat(
    model, tokenizer, conversations: Sequence[list[dict]], *, max_new_tokens: int = 64, batch_size: int = 16
) -> list[Generation]:
    """Greedy answers of a text LLM to chat conversations.

    Args:
        model: an ``AutoModelForCausalLM``-like model.
        tokenizer: its tokenizer (with a chat template).
        conversations: lists of {"role", "content"} messages, each ending with a user turn.
        max_new_tokens: generation length limit.
        batch_size: rows per generate call.

    Returns:
        One :class:`Generation` per conversation: the decoded text, and the new token ids up to and
        including the end-of-turn token (to score the exact answer under another model).
    """
    model.eval()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size)
    return generate_texts(model, tokenizer, [chat_prompt(tokenizer, list(c)) for c in conversations], gen)


def generate_chat(model, tokenizer, conversations: Sequence[list[dict]], **settings) -> list[str]:
    """The texts of :func:`greedy_chat` (special tokens removed, stripped)."""
    return [g.text for g in greedy_chat(model, tokenizer, conversations, **settings)]


def _scored_rows(
    model, prompt_ids: Sequence[list[int]], answer_ids: Sequence[list[int]], pad_id: int, batch_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, log-probabilities over the vocabulary at each answer position) for every pair.

    Pairs run in length-sorted, right-padded batches: padding comes after the real tokens and cannot
    reach them under the causal mask, so every row is scored as if alone.

    Shapes:
        each batch: input_ids (B, L_max); yields (answer_len, vocab) per pair.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(answer_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [list(prompt_ids[i]) + list(answer_ids[i]) for i in idx]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            input_ids[r, : len(s)] = torch.tensor(s)
            attention[r, : len(s)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(idx):
            # Logits at position t predict token t+1: answer tokens sit at len(p)..len(p)+len(a)-1.
            lo = len(prompt_ids[i]) - 1
            yield i, logprobs[r, lo : lo + len(answer_ids[i])]


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.inference_mode()
def answer_logprobs(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    answers: Sequence[str | list[int]],
    *,
    batch_size: int = 8,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Next-token log-probabilities of a model over given answers to chat prompts.

    Args:
        model: a causal LM (a plain LLM or a SpeechLM's language model).
        tokenizer: its tokenizer.
        conversations: chats ending with a user turn.
        answers: the assistant answer to score after each chat: token ids (exact, e.g. from
            :func:`greedy_chat`) or text (tokenized without special tokens).
        batch_size: rows per forward pass.

    Returns:
        Per conversation: (log-probabilities over the vocabulary at each answer position, the answer's
        token ids). Shapes: (answer_len, vocab), (answer_len,). Empty answers give zero-length tensors.
    """
    model.eval()
    p_ids = [
        tokenizer(chat_prompt(tokenizer, list(c)), add_special_tokens=False)["input_ids"]
        for c in conversations
    ]
    a_ids = [
        list(a) if not isinstance(a, str) else tokenizer(a, add_special_tokens=False)["input_ids"]
        for a in answers
    ]
    results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(p_ids)
    for i, rows in _scored_rows(model, p_ids, a_ids, _pad_id(tokenizer), batch_size):
        results[i] = (rows.cpu(), torch.tensor(a_ids[i], dtype=torch.long))
    return results  # type: ignore[return-value]


@torch.inference_mode()
def target_token_probs(
    model, tokenizer, prompts: list[str], targets: list[str], batch_size: int = 16
) -> list[tuple[list[int], list[float]]]:
    """Probability of every target token given its prompt, under a causal LM.

    Args:
        model: a causal LM (eval mode).
        tokenizer: its tokenizer.
        prompts: rendered prompt texts (each ends with the assistant-turn header).
        targets: the assistant answers to score, one per prompt; tokenized on their own, as the speech
            model's collator tokenizes the assistant turn.
        batch_size: sequences per forward pass.

    Returns:
        Per pair: (target token ids, probability of each of those tokens), aligned.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    p_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    if any(not ids for ids in p_ids):
        raise ValueError("target_token_probs: a prompt tokenizes to nothing")
    t_ids = [tokenizer(t, add_special_tokens=False).input_ids for t in targets]
    out: list[tuple[list[int], list[float]] | None] = [None] * len(prompts)
    for i, rows in _scored_rows(model, p_ids, t_ids, _pad_id(tokenizer), batch_size):
        picked = rows.gather(1, torch.tensor(t_ids[i], dtype=torch.long, device=rows.device)[:, None])[:, 0]
        out[i] = (list(t_ids[i]), picked.exp().tolist())
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Loading


class LazyLLM:
    """A text LLM loaded on first use, once: a stage that finds its work done loads nothing.

    Args:
        source: model source (`speechllm.sources.load_llm`).
        dtype: torch dtype name, or None for the checkpoint's.
        model, tokenizer: an already loaded LLM (tests, benchmarks).
    """

    def __init__(self, source: str, dtype: str | None = None, model=None, tokenizer=None):
        self.source, self.dtype = source, dtype
        self.model, self.tokenizer = model, tokenizer

    def get(self):
        """(model in eval mode, tokenizer), loading them the first time."""
        if self.model is None:
            from speechllm.sources import load_llm

            self.model, self.tokenizer = load_llm(
                self.source, dtype=getattr(torch, self.dtype) if self.dtype else None
            )
            self.model.eval()
            logger.info("loaded the text LLM %s", self.source)
        return self.model, self.tokenizer
