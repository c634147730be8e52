"""prefopt's C kernels (prefopt.engine.native): built here with the machine's compiler and run. The
decode attention in C against the attention computed in float32 by PyTorch (head sizes 64 and 128,
the AVX-512 BF16 path where the CPU has it, and 16, the portable loops), rows that left the batch
and prompts of different lengths included; each row's numbers independent of the batch; the build
cached, leaving the process's float handling alone, and PyTorch's attention where no compiler is
found or the build fails."""

import copy
import logging

import pytest
import torch

from prefopt.engine import decode, native
from prefopt.engine.decode import DecodeState, decode_attention


@pytest.fixture(autouse=True)
def fresh_builds():
    native.load.cache_clear()
    yield
    native.load.cache_clear()


def decoding(dim: int, group: int = 3, prompts: int = 5, k: int = 3, written: int = 6):
    """A DecodeState `written` tokens into decoding (bf16, 2 key-value heads of `group` query
    heads each), after rows 1 and 7 left the batch, and one step's query, key and value."""
    torch.manual_seed(dim)
    layers, kv_heads = 2, 2
    heads = group * kv_heads
    state = DecodeState.empty(layers)
    for layer in range(layers):
        for p in range(prompts):
            length = 4 + 3 * p
            state.prefix_keys[layer].append(torch.randn(kv_heads, length, dim).bfloat16())
            state.prefix_values[layer].append(torch.randn(kv_heads, length, dim).bfloat16())
    state.start_decoding(k, 8)
    for cache in state.own_keys + state.own_values:
        cache[:, :, :written] = torch.randn(cache[:, :, :written].shape).bfloat16()
    state.length = written
    state.keep(torch.tensor([r for r in range(prompts * k) if r not in (1, 7)]))
    rows = state.row_prompt.shape[0]
    step = [torch.randn(rows, h, 1, dim).bfloat16() for h in (heads, kv_heads, kv_heads)]
    return state, step


def in_float32(state: DecodeState) -> DecodeState:
    state = copy.copy(state)
    for name in ("prefix_keys", "prefix_values", "own_keys", "own_values"):
        setattr(state, name, [cache.float() for cache in getattr(state, name)])
    return state


def attend(state, step, layer=1):
    module = type("Layer", (), {"layer_idx": layer})()
    with torch.inference_mode():
        return decode_attention(module, *step, state, None)[0]


@pytest.mark.parametrize("dim, group", [(64, 3), (128, 7), (16, 3)])  # 16: the portable loops
def test_attention_in_c_is_float32_attention_rounded_once(dim, group):
    state, step = decoding(dim, group)
    assert decode._kernel() is not None, "a C compiler is on this machine: the kernel builds"
    ours = attend(copy.deepcopy(state), step)
    exact = attend(in_float32(state), [t.float() for t in step])
    assert ours.dtype == torch.bfloat16 and ours.shape == exact.shape
    # one rounding to bf16 (half of 2^-7 relative), and float32 sums in another order
    torch.testing.assert_close(ours.float(), exact, rtol=2**-8 + 1e-5, atol=1e-5)
    pytorch = attend_in_pytorch(copy.deepcopy(state), step)
    assert (ours.float() - exact).abs().max() < (pytorch.float() - exact).abs().max()


def attend_in_pytorch(state, step):
    original, decode._kernel = decode._kernel, lambda: None
    try:
        return attend(state, step)
    finally:
        decode._kernel = original


def test_each_row_is_what_it_is_alone():
    state, step = decoding(64)
    batch = attend(copy.deepcopy(state), step)
    for row in (0, 5, 12):
        alone = copy.deepcopy(state)
        alone.keep(torch.tensor([row]))
        assert torch.equal(attend(alone, [t[row : row + 1] for t in step]), batch[row : row + 1])


def test_the_build_is_cached_and_leaves_float_handling_alone(isolated_cache):
    tiny = torch.tensor([1e-40])  # a float32 subnormal: flush-to-zero would make it 0
    assert native.load("decode") is not None
    (built,) = (isolated_cache / "kernels").glob("decode-*.so")
    stamp = built.stat().st_mtime_ns
    native.load.cache_clear()
    assert native.load("decode") is not None
    assert built.stat().st_mtime_ns == stamp
    assert (tiny * 1.0).item() != 0.0


def test_without_a_compiler_or_with_a_failing_build_attention_stays_in_pytorch(monkeypatch, caplog):
    state, step = decoding(64)
    expected = attend_in_pytorch(copy.deepcopy(state), step)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native.load("decode") is None
    assert torch.equal(attend(copy.deepcopy(state), step), expected)

    native.load.cache_clear()
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    monkeypatch.setattr(native, "COMPILE", [*native.COMPILE, "-DFAIL"])  # not in the cache
    monkeypatch.setattr(native.shutil, "which", lambda name: name if name == "false" else None)
    with caplog.at_level(logging.WARNING):
        assert native.load("decode") is None
    assert "building decode.c failed" in caplog.text
    assert torch.equal(attend(copy.deepcopy(state), step), expected)


def test_prefopt_native_0_keeps_pytorch(monkeypatch):
    monkeypatch.setenv("PREFOPT_NATIVE", "0")
    assert native.load("decode") is None


def within_a_rounding(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """bf16 values that differ at most by the roundings PyTorch makes between its ops: one unit
    in the last place (2^-7 relative), or a few where a sum cancels."""
    assert ours.dtype == theirs.dtype == torch.bfloat16 and ours.shape == theirs.shape
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2**-7, atol=2**-9)


def test_norm_rotary_and_swiglu_in_c_are_pytorch_s_ops_up_to_their_roundings():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from prefopt.engine.decoder import _rotate

    kernels = native.load("decode")
    torch.manual_seed(0)
    tokens, width, heads, dim = 7, 96, 3, 32
    norm = LlamaRMSNorm(width, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
    hidden, residual = (torch.randn(tokens, width).bfloat16() for _ in range(2))
    out, summed = torch.empty_like(hidden), hidden.clone()
    kernels.rms_norm_bf16(summed.data_ptr(), residual.data_ptr(), norm.weight.data_ptr(),
                          out.data_ptr(), tokens, width, 1e-5)  # fmt: skip
    assert torch.equal(summed, hidden + residual)
    within_a_rounding(out, norm(hidden + residual))

    x = torch.randn(tokens, heads * dim + 5).bfloat16()  # a row wider than its heads: a view
    cos, sin = (torch.rand(tokens, dim).bfloat16() for _ in range(2))
    # the rotation in float32, rounded once (PyTorch's bf16 ops round each product and the sum)
    exact, _ = _rotate(*(x[:, None, : heads * dim].float().view(tokens, 1, heads, dim),) * 2,
                       cos[:, None].float(), sin[:, None].float())  # fmt: skip
    rotated = x.clone()
    kernels.rotate_bf16(rotated.data_ptr(), cos.data_ptr(), sin.data_ptr(), tokens, heads, dim,
                        rotated.stride(0))  # fmt: skip
    ours = rotated[:, : heads * dim].view(tokens, 1, heads, dim).float()
    torch.testing.assert_close(ours, exact, rtol=2**-8, atol=1e-6)
    assert torch.equal(rotated[:, heads * dim :], x[:, heads * dim :])

    gate_up = torch.randn(tokens, 2 * width).bfloat16()
    act = torch.empty(tokens, width, dtype=torch.bfloat16)
    kernels.swiglu_bf16(gate_up.data_ptr(), act.data_ptr(), tokens, width)
    gate, up = gate_up.split(width, -1)
    within_a_rounding(act, torch.nn.functional.silu(gate) * up)
