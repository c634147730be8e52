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
    length = query.shape[2]
    rows = []
    for prompt, ends in prefopt_segments:
        one = slice(len(rows), len(rows) + 1)  # 4-D slices: the fused kernels take only [B, H, L, D]
        # prompt + first completion is a plain causal prefix; one call per row, of the row's own
        # length, so a row's numbers do not depend on the other rows of its batch
        first = slice(0, ends[0])
        pieces = [F.scaled_dot_product_attention(query[one, :, first], key[one, :, first], value[one, :, first],
                                                 is_causal=True, **options)]
        for start, end in itertools.pairwise(ends):
            keys = torch.cat([key[one, :, :prompt], key[one, :, start:end]], 2)
            values = torch.cat([value[one, :, :prompt], value[one, :, start:end]], 2)
            mask = _prompt_then_causal(prompt, end - start, query.device)
            pieces.append(F.scaled_dot_product_attention(query[one, :, start:end], keys, values, attn_mask=mask,
                                                         **options))
        if ends[-1] < length:
            pieces.append(query.new_zeros(1, query.shape[1], length - ends[-1], query.shape[3]))
        rows.append(torch.cat(pieces, 2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=512)
def _prompt_then_causal(prompt: int, completion: int, device: torch.device) -> torch.Tensor:
    """[completion, prompt + completion]: every prompt key, then the completion's own keys causally."""
    mask = torch.ones(completion, prompt + completion, dtype=torch.bool, device=device)
    mask[:, prompt:] = torch.ones(completion, completion, dtype=torch.bool, device=device).tril()
    return mask
