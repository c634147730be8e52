"""Attention for packed rows [prompt, completion 1, ..., completion K] that computes only what the
block mask allows. One dense call with a block mask pays for every (query, key) pair of the row;
here each row's prompt and first completion form one causal call (the fused kernels skip the
upper triangle), and each later completion attends to its prompt and itself: cost
P² / 2 + K·(C·P + C² / 2) instead of (P + K·C)². Installed by `use_segment_attention` as a
transformers attention implementation; without segments (unpacked rows, generation) it is plain
SDPA."""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

SEGMENT_ATTENTION = "prefopt_segments"

# a row's layout: its prompt length and where each completion ends; completion k spans
# [ends[k − 1] (or the prompt length for k = 0), ends[k])
Segments = tuple[tuple[int, tuple[int, ...]], ...]


def use_segment_attention(model) -> bool:
    """Switch a transformers model that uses SDPA to segment attention; False when it cannot."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

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


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      prefopt_segments: Segments | None = None, **kwargs):
    """query [B, H, L, D], key and value [B, H_kv, L, D] -> ([B, L, H, D], None)."""
    if prefopt_segments is None or any(kwargs.get(name) is not None for name in _CHANGES_ATTENTION):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    options = {"scale": scaling, "dropout_p": dropout if module.training else 0.0,
               "enable_gqa": query.shape[1] != key.shape[1]}
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return _SegmentAttention.apply(query, key, value, prefopt_segments, options), None
    return _attend(query, key, value, prefopt_segments, options)[0], None


class _SegmentAttention(torch.autograd.Function):
    """The segment calls with their gradients written straight into [B, L, H, D] buffers. Left to
    autograd, each slice of query, key and value would return a zero-filled gradient of the full
    tensor in the backward (about 20 per row and layer) for the sums to add up."""

    @staticmethod
    def forward(ctx, query, key, value, segments, options):
        with torch.enable_grad():
            out, calls = _attend(query, key, value, segments, options, track=True)
        ctx.calls, ctx.shapes = calls, (query.shape, key.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        if not hasattr(ctx, "calls"):
            raise RuntimeError("segment attention: backward through the same graph twice (its buffers are freed "
                               "after the first backward)")
        (batch, heads, length, dim), (_, kv_heads, _, _) = ctx.shapes
        # laid out [B, L, H, D], as the projections they flow back into
        dq = grad.new_zeros(batch, length, heads, dim).transpose(1, 2)
        dk, dv = (grad.new_zeros(batch, length, kv_heads, dim).transpose(1, 2) for _ in range(2))
        pieces = [piece for piece, *_ in ctx.calls]
        grads = [grad[row:row + 1, start:end].transpose(1, 2) for _, (row, start, end, _), _ in ctx.calls]
        leaves = [leaf for *_, call_leaves in ctx.calls for leaf in call_leaves]
        found = iter(torch.autograd.grad(pieces, leaves, grads))
        for _, (row, start, end, prompt), _ in ctx.calls:
            gq, gk, gv = next(found), next(found), next(found)
            one = slice(row, row + 1)
            dq[one, :, start:end] = gq
            if prompt is not None:  # keys [its prompt, itself]
                for total, part in ((dk, gk), (dv, gv)):
                    total[one, :, :prompt] += part[:, :, :prompt]
                    total[one, :, start:end] = part[:, :, prompt:]
            else:  # keys [0, end), the first call of its row
                dk[one, :, :end], dv[one, :, :end] = gk, gv
        del ctx.calls
        return dq, dk, dv, None, None


def _attend(query, key, value, segments: Segments, options: dict, track: bool = False):
    """The segment calls of every row into one [B, L, H, D] output (padding 0), and with `track`
    (else an empty list) each call's output, place (row, start, end, prompt length or None for the
    causal first call) and detached inputs, for the backward."""
    batch, heads, length, dim = query.shape
    out = query.new_empty(batch, length, heads, dim)
    calls = []
    for row, (prompt, ends) in enumerate(segments):
        one = slice(row, row + 1)  # 4-D slices: the fused kernels take only [B, H, L, D]
        # prompt + first completion is a plain causal prefix; one call per row, of the row's own
        # length, so a row's numbers do not depend on the other rows of its batch
        spans = [(0, ends[0], None)] + [(start, end, prompt) for start, end in itertools.pairwise(ends)]
        for start, end, shared in spans:
            if shared is not None:  # keys: its prompt, then itself
                keys = torch.cat([key[one, :, :shared], key[one, :, start:end]], 2)
                values = torch.cat([value[one, :, :shared], value[one, :, start:end]], 2)
                mask = _prompt_then_causal(shared, end - start, query.device)
            else:
                keys, values, mask = key[one, :, :end], value[one, :, :end], None
            inputs = (query[one, :, start:end], keys, values)
            if track:
                inputs = tuple(t.detach().requires_grad_() for t in inputs)
            piece = F.scaled_dot_product_attention(*inputs, attn_mask=mask, is_causal=shared is None, **options)
            out[one, start:end] = piece.detach().transpose(1, 2)
            if track:  # untracked (inference), each piece is freed once copied into `out`
                calls.append((piece, (row, start, end, shared), inputs))
        out[one, ends[-1]:] = 0
    return out, calls


@functools.lru_cache(maxsize=512)
def _prompt_then_causal(prompt: int, completion: int, device: torch.device) -> torch.Tensor:
    """[completion, prompt + completion]: every prompt key, then the completion's own keys causally."""
    mask = torch.ones(completion, prompt + completion, dtype=torch.bool, device=device)
    mask[:, prompt:] = torch.ones(completion, completion, dtype=torch.bool, device=device).tril()
    return mask
