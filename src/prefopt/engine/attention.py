"""Attention for packed rows [prompt, completion 1, ..., completion K] that computes only what the
block mask allows. One dense call with a block mask pays for every (query, key) pair of the row;
here each row's prompt and first completion form one causal call (the fused kernels skip the
upper triangle), and each later completion attends to its prompt and itself: cost
P² / 2 + K·(C·P + C² / 2) instead of (P + K·C)². Calls are padded to multiples of 32 queries and
keys, and those of one padded shape from all rows of a batch run as one batched call (a batched
call costs less per row than calls one by one: docs/performance.md); a row's padded shape is its
own, so its numbers are the same alone or in any batch.
Installed by `use_segment_attention` as a transformers attention implementation; without segments
(unpacked rows, generation) it is plain SDPA.

Each call is PyTorch's fused SDPA kernel, except under bf16 autocast on a CPU with bf16 vector
instructions but no AMX tiles (AMD's Zen 4, for one): there PyTorch's CPU flash kernel runs no
faster in bf16 than in float32, and `_MatmulAttention` does the same work as oneDNN matmuls
instead (float32 scores, bf16 where the result is rounded to bf16 anyway), faster and closer to
float64. With AMX tiles the flash kernel runs its GEMMs through oneDNN's AMX brgemm and is the
faster one. The measurements behind both choices are in docs/performance.md."""

from __future__ import annotations

import contextlib
import functools
import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from prefopt.engine.decode import DecodeState, decode_attention
from prefopt.engine.settings import EngineSettings

SEGMENT_ATTENTION = "prefopt_segments"

# a row's layout: its prompt length and where each completion ends; completion k spans
# [ends[k − 1] (or the prompt length for k = 0), ends[k])
Segments = tuple[tuple[int, tuple[int, ...]], ...]


def use_segment_attention(model) -> bool:
    """Switch a transformers model that uses SDPA to segment attention; False when it cannot."""
    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)
    config = model.config
    if config._attn_implementation == SEGMENT_ATTENTION:
        return True
    if config._attn_implementation != "sdpa" or getattr(config, "sliding_window", None):
        return False  # other kernels were chosen on purpose; windows would need masks of their own
    model.set_attn_implementation(SEGMENT_ATTENTION)
    return model.config._attn_implementation == SEGMENT_ATTENTION


# what some models add to attention (windows, soft-capping, sinks, biases): those rows take the
# dense path with the block mask
_CHANGES_ATTENTION = ("sliding_window", "softcap", "s_aux", "position_bias")


# never traced by torch.compile (engine.compile): the calls follow the batch's layout, a Python loop that
# would be traced again for every new layout; compiled layers run it eagerly between their graphs
@torch.compiler.disable
def segment_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    prefopt_segments: Segments | torch.Tensor | None = None,
    prefopt_engine: EngineSettings | None = None,
    prefopt_decode: DecodeState | None = None,
    **kwargs,
):
    """query [B, H, L, D], key and value [B, H_kv, L, D] -> ([B, L, H, D], None). `prefopt_engine`
    holds the matmul attention's switch and thresholds (the defaults when not given);
    `prefopt_decode` takes the shared-prefix sampling path of prefopt.engine.decode."""
    if prefopt_decode is not None:
        return decode_attention(module, query, key, value, prefopt_decode, scaling)
    if isinstance(prefopt_segments, torch.Tensor):
        prefopt_segments = segments_from_tensor(prefopt_segments)
    if prefopt_segments is None or any(kwargs.get(name) is not None for name in _CHANGES_ATTENTION):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    options = {
        "scale": scaling,
        "dropout_p": dropout if module.training else 0.0,
        "enable_gqa": query.shape[1] != key.shape[1],
    }
    settings = prefopt_engine or EngineSettings()
    matmuls = _use_matmuls(settings, query, dropout)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return _SegmentAttention.apply(query, key, value, prefopt_segments, options, matmuls), None
    return _attend(query, key, value, prefopt_segments, options, matmuls)[0], None


def segments_as_tensor(segments: Segments) -> torch.Tensor:
    """A layout as a [rows, 1 + K_max] int tensor (prompt length, then completion ends, -1 past a
    row's K): the form the engine passes through the decoder layers. torch.compile guards on the
    length of every tuple it is given and compiles again for each new batch size and K; a tensor's
    sizes it takes as dynamic."""
    width = 1 + max(len(ends) for _, ends in segments)
    rows = [[prompt, *ends] + [-1] * (width - 1 - len(ends)) for prompt, ends in segments]
    return torch.tensor(rows, dtype=torch.long)


def segments_from_tensor(layout: torch.Tensor) -> Segments:
    return tuple((row[0], tuple(end for end in row[1:] if end >= 0)) for row in layout.tolist())


def _use_matmuls(
    settings: EngineSettings, query: torch.Tensor, dropout: float
) -> EngineSettings | None:
    """The settings when calls may take the matmul attention, else None."""
    device = query.device.type
    bf16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
    if dropout or _kernel(settings, query.device, bf16) != "matmuls":
        return None
    return settings


class _SegmentAttention(torch.autograd.Function):
    """The segment calls with their gradients written straight into [B, L, H, D] buffers. Left to
    autograd, each slice of query, key and value would return a zero-filled gradient of the full
    tensor in the backward (about 20 per row and layer) for the sums to add up."""

    @staticmethod
    def forward(ctx, query, key, value, segments, options, matmuls):
        with torch.enable_grad():
            out, calls = _attend(query, key, value, segments, options, matmuls, track=True)
        ctx.calls, ctx.shapes = calls, (query.shape, key.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        if not hasattr(ctx, "calls"):
            raise RuntimeError(
                "segment attention: backward through the same graph twice (its buffers are freed "
                "after the first backward)"
            )
        (batch, heads, length, dim), (_, kv_heads, _, _) = ctx.shapes
        # laid out [B, L, H, D], as the projections they flow back into
        dq = grad.new_zeros(batch, length, heads, dim).transpose(1, 2)
        dk, dv = (grad.new_zeros(batch, length, kv_heads, dim).transpose(1, 2) for _ in range(2))
        pieces = [piece for piece, *_ in ctx.calls]
        grads = [_call_grad(grad, piece, places) for piece, places, _, _ in ctx.calls]
        leaves = [leaf for *_, inputs in ctx.calls for leaf in inputs]
        found = iter(torch.autograd.grad(pieces, leaves, grads))
        # calls come in each row's order (its first call, then completion 2, 3, …): the first call
        # sets a prompt's key gradients, later ones add to them
        for _, places, own_keys, _ in ctx.calls:
            gq, gk, gv = next(found), next(found), next(found)
            for i, (row, start, end, prompt) in enumerate(places):
                dq[row, :, start:end] = gq[i, :, : end - start]
                if prompt is None:  # keys [0, end), the first call of its row
                    dk[row, :, :end], dv[row, :, :end] = gk[i, :, :end], gv[i, :, :end]
                    continue
                for total, part in ((dk, gk), (dv, gv)):  # keys [its prompt, itself]
                    total[row, :, :prompt] += part[i, :, :prompt]
                    total[row, :, start:end] = part[i, :, own_keys : own_keys + end - start]
        del ctx.calls
        return dq, dk, dv, None, None, None


# a segment call: (row, start, end, prompt length, or None for the row's causal first call)
Place = tuple[int, int, int, int | None]
# fused calls pad queries and keys to multiples of this, so that calls of one padded shape from any
# rows run as one batched call, while a row's numbers stay what they are alone
_CALL_MULTIPLE = 32


def _attend(
    query,
    key,
    value,
    segments: Segments,
    options: dict,
    matmuls: EngineSettings | None,
    track: bool = False,
):
    """The segment calls of every row into one [B, L, H, D] output (padding 0), and with `track`
    (else an empty list) each call's output, places, where its keys of a completion's own begin,
    and detached inputs, for the backward. `options` go to SDPA; with `matmuls`, calls of at least
    its minimum queries and keys take `_MatmulAttention` instead."""
    batch, heads, length, dim = query.shape
    out = query.new_empty(batch, length, heads, dim)
    calls = []
    # fused calls gather their inputs in the dtype SDPA runs in under autocast (it would cast them)
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    for kernel, places in _planned_calls(segments, matmuls):
        inputs, own_keys = _call_inputs(query, key, value, places, kernel, dtype)
        if track:
            inputs = tuple(t.detach().requires_grad_() for t in inputs)
        first = places[0][3] is None
        if kernel == "matmuls":
            piece = _MatmulAttention.apply(
                *inputs, options["scale"], matmuls.keep_probabilities_up_to
            )
        else:
            prompts = tuple(prompt for *_, prompt in places)
            mask = (
                None
                if first
                else _after_prompt(prompts, own_keys, inputs[0].shape[2], query.device)
            )
            piece = F.scaled_dot_product_attention(
                *inputs, attn_mask=mask, is_causal=first, **options
            )
        for i, (row, start, end, _) in enumerate(places):
            out[row, start:end] = piece[i, :, : end - start].detach().transpose(0, 1)
        if track:  # untracked (inference), each piece is freed once copied into `out`
            calls.append((piece, places, own_keys, inputs))
    for row, (_, ends) in enumerate(segments):
        out[row, ends[-1] :] = 0
    return out, calls


@functools.lru_cache(maxsize=64)  # every layer of a forward plans the same batch
def _planned_calls(
    segments: Segments, matmuls: EngineSettings | None
) -> tuple[tuple[str, tuple[Place, ...]], ...]:
    """Every segment call of a batch, as (kernel, places of one call), in each row's order: a row's
    prompt + first completion (a plain causal prefix), then each later completion against its prompt
    and itself. Fused calls of one padded shape and completion index share one batched call, whose
    shape is each row's own padded shape: a row's numbers do not depend on the other rows of its
    batch. A matmul call is one row's, of its exact shape."""
    groups: dict[tuple, list[Place]] = {}
    for row, (prompt, ends) in enumerate(segments):
        spans = [(0, ends[0], None)] + [
            (start, end, prompt) for start, end in itertools.pairwise(ends)
        ]
        for index, (start, end, shared) in enumerate(spans):
            queries, keys = end - start, end if shared is None else shared + end - start
            if (
                matmuls
                and queries >= matmuls.matmul_min_queries
                and keys >= matmuls.matmul_min_keys
            ):
                group = (index, "matmuls", row)
            elif shared is None:
                group = (index, "fused", _padded(end))
            else:
                group = (index, "fused", _padded(shared), _padded(queries))
            groups.setdefault(group, []).append((row, start, end, shared))
    return tuple((group[1], tuple(places)) for group, places in sorted(groups.items()))


def _padded(size: int) -> int:
    return -(-size // _CALL_MULTIPLE) * _CALL_MULTIPLE


def _call_inputs(
    query, key, value, places: tuple[Place, ...], kernel: str, dtype: torch.dtype | None
):
    """Query, keys and values [n, H(_kv), L, D] of one call of n places, and where its keys of a
    completion's own begin (None for first calls). A matmul call (one place) takes exact slices; a
    fused call pads each place's queries, prompt keys and own keys with zeros to the call's shape,
    in `dtype` if given."""
    row, start, end, prompt = places[0]
    if kernel == "matmuls":
        one = slice(row, row + 1)  # 4-D slices: the kernels take only [B, H, L, D]
        if prompt is None:
            return (query[one, :, :end], key[one, :, :end], value[one, :, :end]), None
        keys, values = (
            torch.cat([t[one, :, :prompt], t[one, :, start:end]], 2) for t in (key, value)
        )
        return (query[one, :, start:end], keys, values), prompt
    if prompt is None:
        prefixes = [(place_row, [(0, place_end)]) for place_row, _, place_end, _ in places]
        return tuple(
            _gathered(t, prefixes, [_padded(end)], dtype) for t in (query, key, value)
        ), None
    shared, queries = _padded(prompt), _padded(end - start)
    own = [(place_row, [(first, last)]) for place_row, first, last, _ in places]
    both = [
        (place_row, [(0, place_prompt), (first, last)])
        for place_row, first, last, place_prompt in places
    ]
    keys, values = (_gathered(t, both, [shared, queries], dtype) for t in (key, value))
    return (_gathered(query, own, [queries], dtype), keys, values), shared


def _gathered(
    tensor: torch.Tensor,
    rows: list[tuple[int, list[tuple[int, int]]]],
    sizes: list[int],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """[n, H, Σ sizes, D] from `tensor` [B, H, L, D], in `dtype` (else the tensor's): for each of n
    (row, spans), span j of that row at the start of its slot of sizes[j] positions, zeros after it."""
    gathered = tensor.new_zeros(
        len(rows), tensor.shape[1], sum(sizes), tensor.shape[3], dtype=dtype or tensor.dtype
    )
    for i, (row, spans) in enumerate(rows):
        slot = 0
        for (start, end), size in zip(spans, sizes, strict=True):
            gathered[i, :, slot : slot + end - start] = tensor[row, :, start:end]
            slot += size
    return gathered


def _call_grad(grad: torch.Tensor, piece: torch.Tensor, places: tuple[Place, ...]) -> torch.Tensor:
    """The output gradient of one call, [n, H, L, D], from the [B, L, H, D] gradient (0 on padding)."""
    call_grad = grad.new_zeros(piece.shape)
    for i, (row, start, end, _) in enumerate(places):
        call_grad[i, :, : end - start] = grad[row, start:end].transpose(0, 1)
    return call_grad


@functools.lru_cache(maxsize=256)  # every layer of a forward makes the same calls
def _after_prompt(
    prompts: tuple[int, ...], shared: int, queries: int, device: torch.device
) -> torch.Tensor:
    """[n, 1, queries, shared + queries] for a fused call of n later completions after prompts of
    `prompts` tokens: each one's prompt keys, then its own keys causally (padded queries see the
    same: their outputs are dropped)."""
    mask = torch.zeros(len(prompts), 1, queries, shared + queries, dtype=torch.bool, device=device)
    mask[:, 0, :, shared:] = torch.ones(queries, queries, dtype=torch.bool, device=device).tril()
    for i, prompt in enumerate(prompts):
        mask[i, 0, :, :prompt] = True
    return mask


def matmuls_are_faster(query: torch.Tensor) -> bool:
    """Under bf16 autocast on this CPU, would `auto` take the matmul attention?"""
    bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return _kernel(EngineSettings(), query.device, bf16) == "matmuls"


def attention_kernel(settings: EngineSettings, precision: str, device: torch.device) -> str:
    """ "matmuls" or "flash": the kernel that a run's large segment calls take (part of the
    reference cache's key: the two agree only to rounding)."""
    return _kernel(settings, device, precision == "bf16")


def _kernel(settings: EngineSettings, device: torch.device, bf16: bool) -> str:
    """The one rule: "on" takes the matmuls, "off" never; "auto" where they are faster, bf16
    autocast on a CPU with bf16 instructions (oneDNN's check) but no AMX tiles, with a torch that
    can send float32 matmuls to oneDNN. The choice is the machine's, fixed for a process and never
    dependent on grad mode or timing: the reference pass must take the policy's kernel, and a
    resumed run the interrupted one's."""
    if settings.matmul_attention == "on":
        return "matmuls"
    faster = (
        settings.matmul_attention == "auto"
        and device.type == "cpu"
        and bf16
        and _matmuls_beat_flash()
    )
    return "matmuls" if faster else "flash"


@functools.cache
def _matmuls_beat_flash() -> bool:  # asked once per process: every layer of every forward asks
    """On a CPU with AMX tiles PyTorch's flash kernel runs its bf16 GEMMs through oneDNN's AMX
    brgemm and beats the matmuls (benchmarks/attention.py; docs/performance.md). Without AMX its
    bf16 path is no faster than float32 and the matmuls win."""
    if not hasattr(torch.backends.mkldnn, "matmul") or not torch.backends.mkldnn.is_available():
        return False
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and not has_amx()


# queries per score tile: skips most of the masked upper triangle, tile stays in cache
_QUERY_BLOCK = 128


class _MatmulAttention(torch.autograd.Function):
    """Attention of queries [1, H, Lq, D] to keys and values [1, H_kv, Lk, D] where query i sees keys
    up to Lk − Lq + i (causal, or a completion after its prompt), from matmuls: per key-value head
    its G = H / H_kv query heads stacked into one GEMM, and per block of queries only the keys any
    of them sees. Scores, softmax and dP = dO·Vᵀ are float32 GEMMs and float32 math (the flash
    kernel rounds queries and keys to bf16 first; dP − Σ P·dP cancels). The GEMMs whose results
    are rounded to bf16 anyway run in bf16 (bf16 GEMMs are the faster ones): probabilities × values (the output
    is bf16), and in the backward dV, dQ and dK, from probabilities and score gradients rounded to
    bf16 as the flash kernel rounds them. The backward reuses the forward's bf16 probabilities up to
    `keep_up_to` keys and recomputes them beyond, like the flash kernel, so memory
    stays linear in length. The output is bf16, as SDPA's under autocast."""

    @staticmethod
    def forward(ctx, query, key, value, scale, keep_up_to):
        ctx.scale = query.shape[-1] ** -0.5 if scale is None else scale
        keep = any(ctx.needs_input_grad[:3]) and key.shape[2] <= keep_up_to
        kept = []
        with _float32_through_onednn():
            q, k, v = (
                _stacked(query, key.shape[1], torch.float32, ctx.scale),
                key[0].float(),
                value[0].bfloat16(),
            )
            out = q.new_empty(q.shape, dtype=torch.bfloat16)
            for h, rows, keys, probs in _probabilities(q, k, query.shape[1] // key.shape[1]):
                probs = probs.bfloat16()
                if keep:
                    kept.append(probs)
                torch.mm(probs, v[h, :keys], out=out[h, rows])
        ctx.kept = kept if keep else None
        ctx.save_for_backward(query, key, value, out)
        return _unstacked(out, query.shape[1])

    @staticmethod
    def backward(ctx, grad):
        query, key, value, out = ctx.saved_tensors
        kept, ctx.kept = ctx.kept, None
        kept = iter(kept) if kept is not None else None
        dk, dv = (torch.zeros(t.shape[1:], dtype=torch.float32) for t in (key, value))
        with _float32_through_onednn():
            kv_heads = key.shape[1]
            q, k, v = (
                _stacked(query, kv_heads, torch.float32, ctx.scale),
                key[0].float(),
                value[0].bfloat16(),
            )
            do = _stacked(grad, kv_heads, torch.float32)
            delta = (do * out).sum(-1, keepdim=True)  # Σ_j P_ij dP_ij, per query and head
            do16, v32, q16 = do.bfloat16(), v.float(), q.bfloat16()  # q is scaled
            k16 = (k * ctx.scale).bfloat16()  # dQ = dS·K·scale
            dq = q16.new_empty(q.shape)
            group = query.shape[1] // kv_heads
            if kept is None:
                blocks = (
                    (h, rows, keys, probs.bfloat16())
                    for h, rows, keys, probs in _probabilities(q, k, group)
                )
            else:
                blocks = ((h, rows, keys, next(kept)) for h, rows, keys in _blocks(q, k, group))
            for h, rows, keys, probs in blocks:
                dv[h, :keys] += probs.T @ do16[h, rows]
                scores_grad = (
                    (do[h, rows] @ v32[h, :keys].T).sub_(delta[h, rows]).mul_(probs).bfloat16()
                )
                torch.mm(scores_grad, k16[h, :keys], out=dq[h, rows])
                dk[h, :keys] += scores_grad.T @ q16[h, rows]
        return (
            _unstacked(dq, query.shape[1]).to(query.dtype),
            dk.unsqueeze(0).to(key.dtype),
            dv.unsqueeze(0).to(value.dtype),
            None,
            None,
        )


@contextlib.contextmanager
def _float32_through_onednn():
    """float32 matmuls through oneDNN's brgemm, autocast off. `fp32_precision = "bf16"` is the
    switch that sends float32 matmuls to oneDNN instead of MKL (the faster at these shapes).
    It allows bf16, but on AVX-512 BF16 CPUs oneDNN picks float32 kernels at these shapes
    (ONEDNN_VERBOSE=1 shows brg_matmul:avx512_core): the results equal MKL's to float32 rounding."""
    settings = torch.backends.mkldnn.matmul
    before = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        with torch.autocast("cpu", enabled=False):
            yield
    finally:
        settings.fp32_precision = before


def _stacked(
    tensor: torch.Tensor, kv_heads: int, dtype: torch.dtype, scale: float = 1.0
) -> torch.Tensor:
    """[1, H, L, D] -> [H_kv, L·G, D] in `dtype`, times `scale`: per key-value head its G = H / H_kv
    query heads' rows, query i's heads in rows iG .. iG + G − 1, so that one GEMM serves the group."""
    _, heads, length, dim = tensor.shape
    view = tensor[0].unflatten(0, (kv_heads, heads // kv_heads)).transpose(1, 2)  # [H_kv, L, G, D]
    stacked = torch.empty(view.shape, dtype=dtype, device=tensor.device)
    if scale == 1.0:
        stacked.copy_(view)
    else:
        torch.mul(view, scale, out=stacked)
    return stacked.view(kv_heads, -1, dim)


def _unstacked(stacked: torch.Tensor, heads: int) -> torch.Tensor:
    """[H_kv, L·G, D] -> [1, H, L, D] (a transposed view of a [1, L, H, D] copy, the layout the
    projections use)."""
    kv_heads, _, dim = stacked.shape
    by_query = stacked.view(kv_heads, -1, heads // kv_heads, dim).transpose(0, 1)  # [L, H_kv, G, D]
    return by_query.reshape(1, -1, heads, dim).transpose(1, 2)


def _probabilities(q: torch.Tensor, k: torch.Tensor, group: int):
    """Per key-value head h and block of its stacked scaled queries `q` [H_kv, Lq·G, D] (keys `k`
    [H_kv, Lk, D]): h, the block's rows, how many keys its queries see (keys up to Lk − Lq + i for
    query i), and the float32 softmax [rows, keys]."""
    offset = k.shape[1] - q.shape[1] // group
    for h, rows, keys in _blocks(q, k, group):
        first, last = rows.start // group, rows.stop // group
        scores = q[h, rows] @ k[h, :keys].T
        scores[:, first + offset :].add_(_upper_triangle(last - first, group, q.device))
        yield h, rows, keys, scores.softmax(-1)


def _blocks(q: torch.Tensor, k: torch.Tensor, group: int):
    """Per key-value head h and block of `_QUERY_BLOCK` queries: h, the block's stacked rows, and
    how many keys the block's last query sees."""
    queries = q.shape[1] // group
    offset = k.shape[1] - queries
    for h in range(q.shape[0]):
        for first in range(0, queries, _QUERY_BLOCK):
            last = min(queries, first + _QUERY_BLOCK)
            yield h, slice(first * group, last * group), last + offset


@functools.lru_cache(maxsize=64)
def _upper_triangle(queries: int, group: int, device: torch.device) -> torch.Tensor:
    """[queries·G, queries]: −inf where key j comes after query i (j > i), 0 elsewhere."""
    position = torch.arange(queries, device=device).repeat_interleave(group).unsqueeze(1)
    keys = torch.arange(queries, device=device)
    return torch.zeros(len(position), queries, device=device).masked_fill_(
        keys > position, float("-inf")
    )
