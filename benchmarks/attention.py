"""PyTorch's fused SDPA kernel against prefopt's matmul attention under bf16 autocast on a CPU, side
by side on the same calls: forward and forward + backward time, and the relative error of the
output and the three input gradients against float64.

Calls as SmolLM2-135M makes them (9 query heads, 3 key-value heads, head dim 64), laid out as in
the model ([1, L, H, D] viewed as [1, H, L, D]): a row's prompt + first completion (causal,
L × L) and a later completion after its prompt (C queries, P + C keys).

    python benchmarks/attention.py                  # 481², 81 × 481, 1024², 2048²
    python benchmarks/attention.py --calls 300x300 64x64
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from prefopt.engine.attention import _MatmulAttention, matmuls_are_faster
from prefopt.engine.settings import EngineSettings

HEADS, KV_HEADS, DIM = 9, 3, 64


def milliseconds(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e3


def measure(queries: int, keys: int, repeats: int) -> dict:
    torch.manual_seed(0)
    query = (torch.randn(1, queries, HEADS, DIM) * 1.5).transpose(1, 2)
    key = (torch.randn(1, keys, KV_HEADS, DIM) * 1.5).transpose(1, 2)
    value = torch.randn(1, keys, KV_HEADS, DIM).transpose(1, 2)
    visible = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    grad = torch.randn(1, HEADS, queries, DIM)
    exact = [t.double().requires_grad_() for t in (query, key, value)]
    out = F.scaled_dot_product_attention(*exact, attn_mask=visible, enable_gqa=True)
    exact = [out.detach(), *torch.autograd.grad(out, exact, grad.double())]

    def fused(q, k, v):
        mask = {"is_causal": True} if queries == keys else {"attn_mask": visible}
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **mask)

    def matmuls(q, k, v):
        return _MatmulAttention.apply(q, k, v, None, EngineSettings().keep_probabilities_up_to)

    results = {}
    for name, attend in (("sdpa", fused), ("matmuls", matmuls)):

        def run(backward: bool, attend=attend):
            leaves = [t.detach().requires_grad_(backward) for t in (query, key, value)]
            # values come from a bf16 matmul
            leaves[2] = leaves[2].bfloat16().detach().requires_grad_(backward)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = attend(*leaves)
            grads = torch.autograd.grad(out, leaves, grad.to(out.dtype)) if backward else []
            return [out, *grads]

        errors = [
            ((got.double() - want).norm() / want.norm()).item()
            for got, want in zip(run(True), exact, strict=True)
        ]
        with torch.no_grad():
            forward = milliseconds(lambda: run(False), repeats)
        both = milliseconds(lambda: run(True), repeats)
        results[name] = {"forward_ms": forward, "forward_backward_ms": both, "errors": errors}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls",
        nargs="+",
        default=["481x481", "81x481", "1024x1024", "2048x2048"],
        help="QUERIESxKEYS (queries ≤ keys; query i sees keys up to keys − queries + i)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    calls = []
    for call in args.calls:
        sizes = call.split("x")
        if (
            len(sizes) != 2
            or not all(n.isdigit() for n in sizes)
            or not 0 < int(sizes[0]) <= int(sizes[1])
        ):
            parser.error(
                f"--calls {call}: expected QUERIESxKEYS with 1 ≤ queries ≤ keys, e.g. 81x481"
            )
        calls.append((call, int(sizes[0]), int(sizes[1])))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen = matmuls_are_faster(torch.empty(1, device="cpu"))
    settings = EngineSettings()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; prefopt picks the matmuls here for "
        f"calls of {settings.matmul_min_queries} queries and {settings.matmul_min_keys} keys and more: "
        f"{'yes' if chosen else 'no (no bf16 instructions, or AMX tiles: the flash kernel is faster there)'}"
    )
    print(
        f"{'call':>11} {'kernel':>8} {'forward ms':>11} {'fwd+bwd ms':>11}   "
        "rel. error vs float64: out / dq / dk / dv"
    )
    for call, queries, keys in calls:
        results = measure(queries, keys, args.repeats)
        for name, r in results.items():
            errors = " / ".join(f"{e:.4f}" for e in r["errors"])
            print(
                f"{call:>11} {name:>8} {r['forward_ms']:>11.2f} {r['forward_backward_ms']:>11.2f}   {errors}"
            )
        sdpa, ours = results["sdpa"], results["matmuls"]
        print(
            f"{call:>11} {'speedup':>8} {sdpa['forward_ms'] / ours['forward_ms']:>10.2f}× "
            f"{sdpa['forward_backward_ms'] / ours['forward_backward_ms']:>10.2f}×"
        )


if __name__ == "__main__":
    main()
