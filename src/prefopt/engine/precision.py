"""Which matmul precision to compute in: bf16 where it is faster (a GPU that supports it, a CPU
with bf16 matrix units), fp32 otherwise, from a measurement at start-up."""

from __future__ import annotations

import functools
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
    bf16, fp32 = _best_readings(matmul_gflops)
    choice = "bf16" if bf16 > 1.5 * fp32 else "fp32"
    return choice, f"matmul on this CPU: bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s"


def _best_readings(measure) -> tuple[float, float]:
    """(bf16, fp32) GFLOP/s of `measure`, the best of three readings each: one reading on a busy
    machine can come out at a third of the real rate. bf16 on a CPU without matrix units (~1
    GFLOP/s, seconds a reading) gets one."""
    fp32 = max(measure(torch.float32) for _ in range(3))
    bf16 = measure(torch.bfloat16)
    if bf16 > fp32 / 4:
        bf16 = max(bf16, *(measure(torch.bfloat16) for _ in range(2)))
    return bf16, fp32


def decode_precision(requested: str, device) -> str:
    """The precision of sampling. `auto` on a CPU measures a decode step's kind of matmul (a few
    dozen rows against a weight held in the precision, as engine/decode_model.py holds it) and
    picks bf16 where it is clearly faster (CPUs with matrix units), fp32 otherwise; the reading is
    taken once a process."""
    if requested == "auto" and getattr(device, "type", device) == "cpu":
        return _cpu_decode_precision()
    return choose_precision(requested, device)[0]


@functools.cache
def _cpu_decode_precision() -> str:
    bf16, fp32 = _best_readings(decode_gflops)
    return "bf16" if bf16 > 1.5 * fp32 else "fp32"


def decode_gflops(dtype, rows: int = 64, size: int = 1024, repeats: int = 8) -> float:
    """GFLOP/s of `rows` token vectors times a size x size weight, both in `dtype`."""
    x, weight = torch.randn(rows, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.nn.functional.linear(x, weight)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, weight)
    return repeats * 2 * rows * size**2 / (time.perf_counter() - started) / 1e9


def matmul_gflops(dtype, size: int = 768, repeats: int = 4, device: str = "cpu") -> float:
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b
    torch.cuda.synchronize() if device == "cuda" else None
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize() if device == "cuda" else None
    return repeats * 2 * size**3 / (time.perf_counter() - started) / 1e9
