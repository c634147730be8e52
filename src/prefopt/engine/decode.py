"""Attention for sampling K continuations of a prompt with the prompt encoded once and its keys
and values held once.

transformers' `generate(num_return_sequences=K)` copies each prompt K times before the prefill:
the prompt is encoded K times, its key/value cache is held K times, and every decoding step reads
all K copies. Here a prompt is prefilled once, its keys and values kept as the shared prefix:
several prompts are packed into one row for the GEMMs (thousands of rows run at several times
the rate of one prompt's few dozen), each attending causally to itself alone, the same call as
its own prefill. Each decoding step attends, for every sequence, to its prompt's prefix and to
its own generated tokens: scores = [q·K_prefixᵀ, q·K_ownᵀ], one softmax over both, output =
P_prefix·V_prefix + P_own·V_own. The sequences of one prompt are stacked into one GEMM against
its prefix (per key-value head; every prompt of the batch in one batched GEMM, prefixes padded
to the longest and masked), so a prefix is read once a step for all its sequences. In bf16 on a
CPU a step's attention is instead one C call for every row (engine/kernels/decode.c,
float32 inside): PyTorch's batched GEMM takes about half a microsecond for each of those
products of a few rows, more than reading their keys and values. Sequences that finish are
dropped from the batch (`DecodeState.keep`), so they stop costing compute.

The attention runs inside any transformers model that uses prefopt's attention implementation
(`use_segment_attention`): a forward given `prefopt_decode=state` takes this path."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from prefopt.engine import native


@dataclasses.dataclass
class DecodeState:
    """The keys and values of a decoding batch. While prefilling (`prefill`), `prefilling` holds
    the lengths of the prompts packed into the call's one row, and each prompt's keys and values
    are appended to `prefix_keys[layer]` ([H_kv, P, D] each); `start_decoding` stacks them into
    [B, H_kv, P_max, D] (padding masked). Row r of the batch is a sequence of prompt
    `row_prompt[r]`, in slot `row_slot[r]` of that prompt's K; `own_keys[layer]` [rows, H_kv, T,
    D] holds what each sequence generated, `length` tokens of it so far, zeros after them.

    Each step attends to all T places of the own cache, the unwritten ones masked, and T doubles
    when it fills: a GEMM on the whole contiguous cache costs less than one on its written
    part, a strided view that CPU bf16 GEMMs first copy (sequences × heads × written × head
    size, twice a layer and step)."""

    prefix_keys: list
    prefix_values: list
    prefix_mask: torch.Tensor | None = None  # [B, P_max] True at a prompt's own positions
    prefix_lengths: torch.Tensor | None = None  # [B] each prompt's positions
    row_prompt: torch.Tensor | None = None
    row_slot: torch.Tensor | None = None
    slots: int = 0
    own_keys: list[torch.Tensor] = dataclasses.field(default_factory=list)
    own_values: list[torch.Tensor] = dataclasses.field(default_factory=list)
    length: int = 0
    prefilling: tuple[int, ...] | None = None  # the packed prompts' lengths; None: decoding

    @classmethod
    def empty(cls, layers: int) -> DecodeState:
        return cls(
            prefix_keys=[[] for _ in range(layers)], prefix_values=[[] for _ in range(layers)]
        )

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Start prefilling `prompts` packed into one row: its input ids and positions ([1, L]
        each, every prompt's positions from 0)."""
        self.prefilling = tuple(map(len, prompts))
        input_ids = torch.tensor([[token for ids in prompts for token in ids]])
        positions = torch.cat([torch.arange(len(ids)) for ids in prompts]).unsqueeze(0)
        return input_ids, positions

    def last_positions(self, length: int) -> torch.Tensor:
        """Where a call of `length` positions a row gives its next-token logits: each packed
        prompt's last position while prefilling, else the row's last."""
        if self.prefilling is None:
            return torch.tensor([length - 1])
        return torch.tensor(self.prefilling).cumsum(0) - 1

    def start_decoding(self, k: int, capacity: int) -> None:
        """Lay out k rows per prompt (prompt-major), each with room for min(`capacity`, 16)
        generated tokens at first (`make_room` doubles it as needed)."""
        prompts = len(self.prefix_keys[0])
        lengths = torch.tensor([keys.shape[1] for keys in self.prefix_keys[0]])
        self.prefix_lengths = lengths
        self.prefix_mask = torch.arange(int(lengths.max())) < lengths.unsqueeze(1)
        self.prefix_keys = [_stack_padded(keys) for keys in self.prefix_keys]
        self.prefix_values = [_stack_padded(values) for values in self.prefix_values]
        self.row_prompt = torch.arange(prompts).repeat_interleave(k)
        self.row_slot = torch.arange(k).repeat(prompts)
        self.slots, self.prefilling, self.length = k, None, 0
        _, heads, _, dim = self.prefix_keys[0].shape
        shape = (prompts * k, heads, min(capacity, 16), dim)
        self.own_keys = [keys.new_zeros(shape) for keys in self.prefix_keys]
        self.own_values = [values.new_zeros(shape) for values in self.prefix_values]

    def make_room(self) -> None:
        """Room for the token at `length` in the own cache: doubled when full."""
        capacity = self.own_keys[0].shape[2]
        if self.length < capacity:
            return
        rows = torch.arange(self.own_keys[0].shape[0])
        self.own_keys = [self._kept(keys, rows, 2 * capacity) for keys in self.own_keys]
        self.own_values = [self._kept(values, rows, 2 * capacity) for values in self.own_values]

    @property
    def full(self) -> bool:
        """Every prompt still has all its rows, in order: the by-prompt layout is a plain view."""
        return self.row_prompt.shape[0] == self.prefix_mask.shape[0] * self.slots

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (ascending), e.g. the sequences that have not finished."""
        self.row_prompt, self.row_slot = self.row_prompt[rows], self.row_slot[rows]
        self.own_keys = [self._kept(keys, rows) for keys in self.own_keys]
        self.own_values = [self._kept(values, rows) for values in self.own_values]

    def _kept(self, cache: torch.Tensor, rows: torch.Tensor, capacity: int = 0) -> torch.Tensor:
        """The rows' cache with its capacity (or `capacity`); only the written tokens are copied."""
        rest = cache.shape[1], capacity or cache.shape[2], cache.shape[3]
        kept = cache.new_zeros((rows.shape[0], *rest))
        torch.index_select(cache[:, :, : self.length], 0, rows, out=kept[:, :, : self.length])
        return kept


def _stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    length = max(t.shape[1] for t in tensors)
    return torch.stack(
        [torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) for t in tensors]
    )


def _prefill_attention(query, key, value, state: DecodeState, layer: int, scaling) -> torch.Tensor:
    """Each packed prompt attends causally to itself alone, in the call its own prefill makes
    (packing changes only the GEMMs' rounding, by row count); its keys and values become its
    prefix."""
    outs, start = [], 0
    for length in state.prefilling:
        q, k, v = (t[:, :, start : start + length] for t in (query, key, value))
        state.prefix_keys[layer].append(k[0])
        state.prefix_values[layer].append(v[0])
        outs.append(F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        ))  # fmt: skip
        start += length
    return torch.cat(outs, 2).transpose(1, 2)


def decode_attention(module, query, key, value, state: DecodeState, scaling: float | None):
    """query [N, H, L, D], key and value [N, H_kv, L, D] -> ([N, L, H, D], None): the prefill of
    the prompts packed into one row (N = 1, L = their lengths' sum), or one decoding step of every
    row (L = 1)."""
    layer = module.layer_idx
    if state.prefilling is not None:
        return _prefill_attention(query, key, value, state, layer, scaling), None
    if query.shape[2] != 1:
        raise ValueError("decoding takes one token per sequence a step")
    if layer == 0:
        state.make_room()
    rows, heads, _, dim = query.shape
    scale = dim**-0.5 if scaling is None else scaling
    if query.dtype == torch.bfloat16 and query.device.type == "cpu" and _kernel() is not None:
        return _attention_in_c(query, key, value, state, layer, scale), None
    prefix_keys, prefix_values = state.prefix_keys[layer], state.prefix_values[layer]
    prompts, kv_heads, prompt_length, _ = prefix_keys.shape
    group, slots = heads // kv_heads, state.slots
    place = (state.row_prompt, state.row_slot)
    t = state.length
    own_keys, own_values = state.own_keys[layer], state.own_values[layer]
    own_keys[:, :, t] = key[:, :, 0]
    own_values[:, :, t] = value[:, :, 0]

    full = state.full

    def by_prompt(per_row: torch.Tensor) -> torch.Tensor:
        """[rows, H_kv, G, X] -> [B, H_kv, slots·G, X]: each prompt's sequences stacked for one GEMM
        (finished rows' places left zero)."""
        if full:
            padded = per_row.view(prompts, slots, *per_row.shape[1:])
        else:
            padded = per_row.new_zeros(prompts, slots, *per_row.shape[1:])
            padded[place] = per_row
        return padded.transpose(1, 2).reshape(prompts, kv_heads, slots * group, per_row.shape[-1])

    def by_row(per_prompt: torch.Tensor) -> torch.Tensor:
        """The inverse of `by_prompt`."""
        stacked = per_prompt.view(prompts, kv_heads, slots, group, -1).transpose(1, 2)
        return stacked.reshape(rows, kv_heads, group, -1) if full else stacked[place]

    # query head h reads key-value head h // group
    q = query[:, :, 0].view(rows, kv_heads, group, dim)
    # [B, H_kv, slots·G, P_max], padding masked
    prefix_scores = (by_prompt(q) @ prefix_keys.transpose(2, 3)).masked_fill_(
        ~state.prefix_mask[:, None, None, :], -torch.inf
    )
    scores = torch.cat([by_row(prefix_scores), q @ own_keys.transpose(2, 3)], -1).float()
    scores[..., prompt_length + t + 1 :] = -torch.inf  # the own cache's unwritten places
    probs = torch.softmax(scores.mul_(scale), -1).to(value.dtype)
    from_prefix = by_row(by_prompt(probs[..., :prompt_length]) @ prefix_values)
    out = from_prefix + probs[..., prompt_length:] @ own_values
    return out.reshape(rows, 1, heads, dim), None


def _kernel():
    """engine/kernels/decode.c's attention, or None where it cannot be built."""
    kernels = native.load("decode")
    return None if kernels is None else kernels.decode_attention_bf16


def _attention_in_c(query, key, value, state: DecodeState, layer: int, scale: float):
    """The step's attention of every row in one C call (bf16 on a CPU), which also writes the
    step's keys and values into the own cache: each row's scores, softmax and weighted sums in
    float32 over its prompt's prefix and its own cache's written places."""
    rows, heads, _, dim = query.shape
    # [rows, heads, 1, dim], each row's heads side by side: e.g. views of the q/k/v GEMM's output
    query, key, value = (x if x.stride(3) == 1 and x.stride(1) == dim else x.contiguous()
                         for x in (query, key, value))  # fmt: skip
    prefix_keys, own_keys = state.prefix_keys[layer], state.own_keys[layer]
    cached = tuple(t.contiguous() for t in (prefix_keys, state.prefix_values[layer],
                   state.prefix_lengths, own_keys, state.own_values[layer], state.row_prompt))  # fmt: skip
    out = query.new_empty(rows, 1, heads, dim)
    failed = _kernel()(
        query.data_ptr(), key.data_ptr(), value.data_ptr(), query.stride(0), key.stride(0),
        value.stride(0), *(t.data_ptr() for t in cached), out.data_ptr(), rows, heads, prefix_keys.shape[1], dim,
        prefix_keys.shape[2], own_keys.shape[2], state.length + 1, scale,
    )  # fmt: skip
    if failed:
        raise MemoryError("the decode attention's scores did not fit in memory")
    return out
