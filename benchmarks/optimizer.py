"""AdamW's step on a model's trained parameters: PyTorch's default on a CPU (a Python loop over the
tensors) against the fused kernel prefopt uses, alternating, on the same parameters and gradients.
Also the largest difference between the two updates after the steps.

    python benchmarks/optimizer.py                  # the default model: full fine-tuning and LoRA
    python benchmarks/optimizer.py --model PATH --steps 10
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from prefopt.engine.model import LoraSettings, load_model


def step_seconds(params: list, fused: bool, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    """Per-step seconds of `steps` AdamW steps (the first creates the state) and the updated values."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    generator = torch.Generator().manual_seed(0)
    for copy in copies:
        copy.grad = torch.randn(copy.shape, generator=generator)
    optimizer = torch.optim.AdamW(copies, lr=1e-4, weight_decay=0.01, fused=fused)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds, [c.detach() for c in copies]


def milliseconds(seconds: float) -> str:
    """At least 3 significant digits, no exponent: a tiny model's step takes microseconds."""
    ms = seconds * 1e3
    return f"{ms:.{max(0, 2 - math.floor(math.log10(ms)))}f}" if ms > 0 else "0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit(
            f"--steps {args.steps}: needs at least 2 (the first step creates the state)"
        )
    try:  # LoRA as `prefopt train` sets it up by default: r = 16 on every projection
        setups = {
            "full": load_model(args.model),
            "lora r=16": load_model(args.model, lora=LoraSettings()),
        }
    except (OSError, ValueError) as error:
        raise SystemExit(f"--model {args.model}: {error}") from None
    print(
        f"{'parameters':>22} {'optimizer':>10} {'first step ms':>14} {'later steps ms':>15} {'max |Δ|':>9}"
    )
    for name, model in setups.items():
        params = [p for p in model.parameters() if p.requires_grad]
        label = f"{name} ({sum(p.numel() for p in params) / 1e6:.1f} M)"
        runs = {False: [], True: []}
        for _ in range(args.rounds):
            for fused in runs:
                runs[fused].append(step_seconds(params, fused, args.steps))
        loop, fused = runs[False][0][1], runs[True][0][1]
        difference = max((a - b).abs().max().item() for a, b in zip(loop, fused, strict=True))
        for kind, measured in runs.items():
            first = min(seconds[0] for seconds, _ in measured)
            later = min(sorted(seconds[1:])[len(seconds[1:]) // 2] for seconds, _ in measured)
            print(
                f"{label:>22} {'fused' if kind else 'loop':>10} {milliseconds(first):>14} {milliseconds(later):>15} "
                f"{difference if kind else 0.0:>9.1e}"
            )
        model.to("meta")  # frees the weights before the next setup


if __name__ == "__main__":
    main()
