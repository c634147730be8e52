"""Which matmul precision to compute in: bf16 where it is faster (a GPU that supports it, a CPU
with bf16 matrix units), fp32 otherwise, from a measurement at start-up."""

from __future__ import annotations

import time

import torch


def choose_precision(requested: str, device) -> tuple[str, str]:
    """`auto` picks bf16 where it is faster: on a GPU that supports it, or on a CPU whose bf16
    matmul measures clearly faster than fp32 (CPUs with matrix units); fp32 otherwise.
    Returns (precision, reason)."""
    if requested != "auto":
        return requested, "as configured"
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return ("bf16" if supported else "fp32"), f"GPU {'supports' if supported else 'lacks'} bf16"
    if device.type != "cpu":
        return "fp32", f"{device.type} device"
    # the best of three readings each: one reading on a busy machine can come out at a third of
    # the real rate. bf16 on a CPU without matrix units (~1 GFLOP/s, seconds a reading) gets one.
    fp32 = max(matmul_gflops(torch.float32) for _ in range(3))
    bf16 = matmul_gflops(torch.bfloat16)
    if bf16 > fp32 / 4:
        bf16 = max(bf16, *(matmul_gflops(torch.bfloat16) for _ in range(2)))
    choice = "bf16" if bf16 > 1.5 * fp32 else "fp32"
    return choice, f"matmul on this CPU: bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s"


def decode_precision(requested: str, device) -> str:
    """The precision of sampling. `auto` on a CPU decodes in fp32 even where bf16 trains faster: a
    decode step is a few hundred small matmuls on one token a sequence, where autocast's casts cost
    more than bf16 saves (docs/generate.md has the measurement)."""
    if requested == "auto" and getattr(device, "type", device) == "cpu":
        return "fp32"
    return choose_precision(requested, device)[0]


def matmul_gflops(dtype, size: int = 768, repeats: int = 4, device: str = "cpu") -> float:
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b
    torch.cuda.synchronize() if device == "cuda" else None
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize() if device == "cuda" else None
    return repeats * 2 * size**3 / (time.perf_counter() - started) / 1e9
