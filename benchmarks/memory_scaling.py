"""Peak memory of one prefopt training step as lists grow: prompt P, K completions of C tokens,
P + K·C from 256 to 2048 tokens. Each setting runs in a process of its own; the figure is the
growth of resident memory above the loaded model during one forward + backward (sampled every
2 ms), so it measures activations, not the model. Memory should grow no faster than linearly in
P + K·C: the last column (MB per 1,000 tokens) should stay flat.

    python benchmarks/memory_scaling.py                 # default model, full fine-tuning, fp32
    python benchmarks/memory_scaling.py --model PATH    # any model folder
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

SETTINGS = [  # (P, K, C)
    (128, 2, 64),
    (128, 4, 32),
    (64, 8, 24),
    (256, 2, 128),
    (256, 4, 64),
    (128, 8, 48),
    (512, 2, 256),
    (512, 4, 128),
    (256, 8, 96),
    (1024, 2, 512),
    (1024, 4, 256),
    (512, 8, 192),
]


def one_step(model_spec: str, prompt: int, k: int, completion: int, share_prompt: bool) -> dict:
    import psutil
    import torch

    from prefopt.data.tokenize import TokenizedList
    from prefopt.engine.logps import collate, completion_logps
    from prefopt.engine.model import load_model
    from prefopt.losses import LOSSES, ListBatch

    model = load_model(model_spec)
    generator = torch.Generator().manual_seed(0)
    ids = lambda n: tuple(torch.randint(100, 1000, (n,), generator=generator).tolist())
    example = TokenizedList(
        prompt_ids=ids(prompt),
        completion_ids=tuple(ids(completion) for _ in range(k)),
        scores=tuple(float(k - i) for i in range(k)),
    )
    batch = collate([example], [0], 0, share_prompt=share_prompt)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    running = True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    result = completion_logps(model, batch)
    loss = LOSSES["plackett_luce"](
        ListBatch(logps=result.logps, ref_logps=result.logps.detach(), scores=batch.scores)
    ).loss.sum()
    loss.backward()
    seconds = time.perf_counter() - started
    running = False
    sampler.join()
    return {
        "P": prompt,
        "K": k,
        "C": completion,
        "tokens": prompt + k * completion,
        "peak_mb": (peak - baseline) / 2**20,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--rows", action="store_true", help="one row per completion instead of a shared prompt"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        prompt, k, completion = map(int, args.one.split(","))
        print(
            "RESULT " + json.dumps(one_step(args.model, prompt, k, completion, not args.rows)),
            flush=True,
        )
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"prefopt memory per training step ({'rows' if args.rows else 'shared prompt'})"
    )
    for column in ("P", "K", "C", "P + K·C", "peak MB above model", "MB per 1k tokens", "step s"):
        table.add_column(column, justify="right")
    for prompt, k, completion in SETTINGS:
        command = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--one",
            f"{prompt},{k},{completion}",
        ]
        command += ["--rows"] * args.rows
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise SystemExit(done.stderr[-3000:])
        r = json.loads(lines[-1].removeprefix("RESULT "))
        table.add_row(
            str(r["P"]),
            str(r["K"]),
            str(r["C"]),
            str(r["tokens"]),
            f"{r['peak_mb']:.0f}",
            f"{1000 * r['peak_mb'] / r['tokens']:.0f}",
            f"{r['seconds']:.1f}",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
