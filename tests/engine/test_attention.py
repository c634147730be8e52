"""Segment attention against the dense block mask, and the bf16 matmul attention against float64
and PyTorch's fused kernel."""

import itertools

import pytest
import torch

from prefopt.engine.settings import EngineSettings


def _segment_layout(
    heads: int = 4, kv_heads: int = 2, dim: int = 8, scale: int = 1, dtype=torch.float32
):
    """Ragged rows (prompts and completions of different lengths, K = 1..3, right padding) with
    their query, key and value, the dense block mask that segment attention must equal, and which
    positions are real."""
    torch.manual_seed(0)
    # (prompt length, completion ends)
    layout = ((5, (9,)), (3, (7, 8, 12)), (6, (8, 11)), (0, (4, 9)))
    layout = tuple((prompt * scale, tuple(end * scale for end in ends)) for prompt, ends in layout)
    length = 14 * scale
    query = torch.randn(4, heads, length, dim, dtype=dtype, requires_grad=True)
    key, value = (
        torch.randn(4, kv_heads, length, dim, dtype=dtype, requires_grad=True) for _ in range(2)
    )
    owner = torch.full((4, length), -1)
    for row, (prompt, ends) in enumerate(layout):
        owner[row, :prompt] = 0
        for k, (start, end) in enumerate(itertools.pairwise((prompt, *ends))):
            owner[row, start:end] = k + 1
    allowed = (
        torch.ones(length, length, dtype=torch.bool).tril()
        & (owner.unsqueeze(1) >= 0)
        & ((owner.unsqueeze(2) == owner.unsqueeze(1)) | (owner.unsqueeze(1) == 0))
    )
    allowed |= torch.eye(length, dtype=torch.bool)
    return layout, (query, key, value), allowed.unsqueeze(1), owner >= 0


def test_segment_attention_equals_the_dense_block_mask():
    """Grouped query heads: the segment calls give the dense masked attention at every real position."""
    from types import SimpleNamespace

    from prefopt.engine.attention import segment_attention

    layout, (query, key, value), allowed, real = _segment_layout()
    dim = query.shape[-1]
    module = SimpleNamespace(training=False, num_key_value_groups=2, is_causal=True)
    dense = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, enable_gqa=True
    ).transpose(1, 2)
    segments, _ = segment_attention(
        module, query, key, value, None, scaling=dim**-0.5, prefopt_segments=layout
    )
    torch.testing.assert_close(segments[real], dense[real], atol=1e-6, rtol=1e-5)
    assert (segments[~real] == 0).all()
    weights = torch.randn_like(dense) * real[..., None, None]
    grads = [
        torch.autograd.grad((out * weights).sum(), (query, key, value)) for out in (segments, dense)
    ]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # a model that adds a window (or soft-capping, sinks, a bias) gets the dense call with its mask
    windowed, _ = segment_attention(
        module,
        query,
        key,
        value,
        allowed,
        scaling=dim**-0.5,
        prefopt_segments=layout,
        sliding_window=4096,
    )
    torch.testing.assert_close(windowed, dense)


def test_a_rows_segment_attention_is_the_same_alone_and_in_any_batch():
    """Calls of one padded shape from several rows run as one batched call: each row's output and
    gradients equal, bit for bit in float32, what the row gives alone (step 0's rewards are exactly
    0 only if the reference pass and the first step, batched differently, agree)."""
    from types import SimpleNamespace

    from prefopt.engine.attention import segment_attention

    # first calls of 70, 72 and 90 tokens are all padded to 96 (one batched call); the later
    # completions of rows 0 and 1 (prompts of 40 and 45, 31 and 28 tokens) to 64 + 32
    torch.manual_seed(0)
    layout = ((40, (70, 101)), (45, (72, 100)), (33, (90,)))
    length = 112
    query = torch.randn(3, 6, length, 64)
    key, value = (torch.randn(3, 2, length, 64) for _ in range(2))
    module = SimpleNamespace(training=False, num_key_value_groups=3, is_causal=True)
    weights = torch.randn(3, length, 6, 64)

    def attend(rows):
        leaves = [t[rows].detach().requires_grad_() for t in (query, key, value)]
        out, _ = segment_attention(
            module, *leaves, None, prefopt_segments=tuple(layout[r] for r in rows)
        )
        return [out.detach(), *torch.autograd.grad((out * weights[rows]).sum(), leaves)]

    together = attend([0, 1, 2])
    for row in range(3):
        alone = attend([row])
        for got, want in zip(alone, together, strict=True):
            assert torch.equal(got[0], want[row])


def _relative_errors(attend, inputs, weights, exact):
    """Relative error (norm of the difference / norm) of the output and the three input gradients
    of `attend` under bf16 autocast, against `exact` (float64 output and gradients)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(*leaves)
    grads = torch.autograd.grad((out.float() * weights).sum(), leaves)
    return [
        ((got.double() - want).norm() / want.norm()).item()
        for got, want in zip((out, *grads), exact, strict=True)
    ]


@pytest.mark.parametrize(
    "keep", [True, False], ids=["probabilities-kept", "probabilities-recomputed"]
)
@pytest.mark.parametrize("queries, keys", [(300, 300), (200, 460), (5, 9)])
def test_matmul_attention_is_at_least_as_accurate_as_the_flash_kernel(queries, keys, keep):
    """Under bf16 autocast on a CPU, against float64: output and gradients of the matmul attention
    (float32 scores, bf16 GEMMs where the result is rounded to bf16) at most the error of PyTorch's
    fused kernel on the same call, with the backward reusing the forward's probabilities or
    recomputing them. 300 queries span three query blocks; 200 after a 260-token prompt are a
    later completion."""
    from prefopt.engine.attention import _MatmulAttention

    torch.manual_seed(0)
    heads, kv_heads, dim = 6, 2, 64
    # laid out as in a model: [1, L, H, D] viewed as [1, H, L, D]; scores of a few units, as trained models have
    query = (torch.randn(1, queries, heads, dim) * 2).transpose(1, 2)
    key = (torch.randn(1, keys, kv_heads, dim) * 2).transpose(1, 2)
    value = torch.randn(1, keys, kv_heads, dim).transpose(1, 2)
    visible = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    weights = torch.randn(1, heads, queries, dim)
    exact = [t.double().requires_grad_() for t in (query, key, value)]
    out = torch.nn.functional.scaled_dot_product_attention(
        *exact, attn_mask=visible, enable_gqa=True
    )
    exact = [out.detach(), *torch.autograd.grad((out * weights.double()).sum(), exact)]

    def flash(q, k, v):
        causal = {"is_causal": True} if queries == keys else {"attn_mask": visible}
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, **causal)

    def matmuls(q, k, v):
        # values arrive in bf16 from autocast
        return _MatmulAttention.apply(q, k, v.bfloat16(), None, 10_000 if keep else 0)

    ours, theirs = (
        _relative_errors(attend, (query, key, value), weights, exact) for attend in (matmuls, flash)
    )
    assert max(ours) < 0.01
    # on CPUs with AMX the fused kernel's bf16 tiles round a little differently: one gradient of the
    # 300 × 300 call came out 1.054× the fused kernel's error there (0.0083 against 0.0079)
    for mine, fused in zip(ours, theirs, strict=True):
        assert mine <= 1.1 * fused


def test_matmul_attention_backward_is_the_same_with_kept_or_recomputed_probabilities():
    """The backward's two ways to the probabilities (kept from the forward up to
    `keep_probabilities_up_to` keys, recomputed beyond) give the same gradients bit for bit, and
    the kept ones are let go after the backward."""
    import prefopt.engine.attention as attention

    torch.manual_seed(0)
    query = (torch.randn(1, 300, 6, 64) * 2).transpose(1, 2)
    key = (torch.randn(1, 300, 2, 64) * 2).transpose(1, 2)
    value = torch.randn(1, 300, 2, 64).bfloat16().transpose(1, 2)
    grad = torch.randn(1, 6, 300, 64).bfloat16()

    def gradients(limit: int):
        leaves = [t.detach().requires_grad_() for t in (query, key, value)]
        out = attention._MatmulAttention.apply(*leaves, None, limit)
        kept = out.grad_fn.kept
        grads = torch.autograd.grad(out, leaves, grad)
        return kept, out.grad_fn.kept, grads

    kept, after, grads = gradients(300)
    # 2 key heads × 3 query blocks, freed by the backward
    assert len(kept) == 2 * 3 and after is None
    none, _, recomputed = gradients(299)
    assert none is None
    for a, b in zip(grads, recomputed, strict=True):
        assert torch.equal(a, b)


def test_segment_attention_through_matmuls_equals_the_dense_block_mask(monkeypatch):
    """The matmul path with the segment bookkeeping (first calls causal, later completions after
    their prompt), forced on for every call: equal to float64 dense attention with the block mask
    up to bf16 rounding, and as close as the flash kernel's calls."""
    from types import SimpleNamespace

    import prefopt.engine.attention as attention

    layout, inputs, allowed, real = _segment_layout(heads=6, kv_heads=2, dim=64, scale=12)
    module = SimpleNamespace(training=False, num_key_value_groups=3, is_causal=True)
    exact = [t.double() for t in inputs]
    dense = torch.nn.functional.scaled_dot_product_attention(
        *exact, attn_mask=allowed, enable_gqa=True
    )
    weights = torch.randn(dense.transpose(1, 2).shape) * real[..., None, None]
    exact_grads = torch.autograd.grad((dense.transpose(1, 2) * weights.double()).sum(), exact)
    exact = [dense.detach().transpose(1, 2) * real[..., None, None], *exact_grads]  # padding: 0

    def errors(matmuls: str):
        settings = EngineSettings(matmul_attention=matmuls, matmul_min_queries=0, matmul_min_keys=0)
        segments = lambda q, k, v: attention.segment_attention(
            module, q, k, v, None, prefopt_segments=layout, prefopt_engine=settings
        )[0]
        return _relative_errors(segments, inputs, weights, exact)

    fused = errors("off")
    calls = []
    monkeypatch.setattr(
        attention._MatmulAttention,
        "apply",
        lambda *args, apply=attention._MatmulAttention.apply: calls.append(1) or apply(*args),
    )
    ours = errors("on")
    assert len(calls) == 1 + 3 + 2 + 2  # every call of every row
    assert max(ours) < 0.01
    for mine, theirs in zip(
        ours, fused, strict=True
    ):  # 1.1: as in the single-call test above (AMX CPUs)
        assert mine <= 1.1 * theirs


def test_the_attention_kernel_is_the_machines_and_the_settings(monkeypatch):
    """matmuls where asked ("on"), or under "auto" in bf16 on a CPU where they beat the flash kernel
    (bf16 instructions without AMX tiles); a resumed run gets the same answer as the first."""
    import prefopt.engine.attention as attention

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    on, off, auto = (EngineSettings(matmul_attention=mode) for mode in ("on", "off", "auto"))
    assert {
        attention.attention_kernel(on, p, d)
        for p, d in (("bf16", cpu), ("fp32", cpu), ("bf16", gpu))
    } == {"matmuls"}  # "on" is the matmuls wherever it runs, and the cache's key says so
    assert {
        attention.attention_kernel(s, p, d)
        for s in (off, auto)
        for p, d in (("fp32", cpu), ("bf16", gpu))
    } | {attention.attention_kernel(off, "bf16", cpu)} == {"flash"}
    for amx, expected in ((True, "flash"), (False, "matmuls")):
        attention._matmuls_beat_flash.cache_clear()
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        assert attention.attention_kernel(auto, "bf16", cpu) == expected
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert attention.matmuls_are_faster(torch.empty(1)) == (expected == "matmuls")
    attention._matmuls_beat_flash.cache_clear()
