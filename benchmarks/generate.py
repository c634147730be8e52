"""prefopt's sampler against transformers' generate on the workloads the product runs, same model,
prompts, settings and precision (bf16 where the machine decodes faster in it, weights held in
bf16 on both sides; `--precision` to force one), one process per measurement, alternating:

    demo_round  the demo loop's sampling round: 96 of its prompts x K = 4, 64 new tokens, T = 1
    eval        its evaluation: the 60 held-out prompts, greedy, 64 new tokens
    rl_step     a `prefopt rl` step: 16 prompts x K = 8, 64 new tokens, T = 1
    long        16 long prompts (≈ 400 tokens) x K = 8, 64 new tokens, T = 1

Every answer runs to 64 tokens on both sides (no early end), so both generate the same tokens.
transformers runs with its dynamic cache, with its static cache, and with its static cache and its
forward compiled (`torch.compile` through generate's `compile_config`, which transformers applies
on accelerators only unless told otherwise; timed on a second run of the workload, after the first
has compiled every shape); the fastest of the three is the comparison. For each workload the
roofline is the physical limit of its decode steps (for each step, the larger of its FLOPs ÷ a
large GEMM's rate and its bytes of weights and cache ÷ a large copy's bandwidth, measured in this
process in the workload's precision); "reached" is roofline ÷ prefopt's time. Prints seconds,
tokens/s, peak memory above the model and the ratios; --json.

    python benchmarks/generate.py --json benchmarks/results-generate.json
    python benchmarks/generate.py --quick                # 4 prompts a workload, 8 new tokens
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

WORKLOADS = {  # prompts, K, temperature
    "demo_round": (96, 4, 1.0),
    "eval": (60, 1, 0.0),
    "rl_step": (16, 8, 1.0),
    "long": (16, 8, 1.0),
}
BACKENDS = ("prefopt", "transformers", "transformers_static", "transformers_compiled")
WORDS = (
    "the river runs past the old mill where seven green boats wait for the morning light while "
    "quiet music drifts over the water and a paper window glows above the garden table"
).split()


def workload_prompts(name: str, count: int, tokenizer) -> list[list[int]]:
    """The demo's own prompts (training or held-out), or long made-up ones, as token ids."""
    import tempfile

    from prefopt.data import TokenizeSettings
    from prefopt.data.tokenize import prompt_ids
    from prefopt.demo import write_task
    from prefopt.generate import load_prompts

    with tempfile.TemporaryDirectory() as folder:
        task = write_task(folder)
        source = task["heldout"] if name == "eval" else task["train"]
        records = load_prompts(str(source))[:count]
    if name == "long":
        for i, record in enumerate(records):
            body = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(330))
            record.prompt[-1]["content"] = f"Story {i}: {body}. Continue the story."
    settings = TokenizeSettings(max_prompt_tokens=None)
    return [prompt_ids(record, tokenizer, settings) for record in records]


def worker(args) -> dict:
    import psutil
    import torch

    from prefopt.engine.decode_model import DecodeModel
    from prefopt.engine.model import load_model, load_tokenizer
    from prefopt.engine.precision import decode_precision
    from prefopt.generate.sampling import SamplingSettings, sample

    count, k, temperature = WORKLOADS[args.workload]
    tokenizer = load_tokenizer(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = decode_precision(args.precision, device)
    prompts = workload_prompts(args.workload, args.prompts or count, tokenizer)
    settings = SamplingSettings(k=k, temperature=temperature, max_new_tokens=args.max_new_tokens,
                                min_new_tokens=args.max_new_tokens, seed=0,
                                batch_size=args.batch)  # fmt: skip
    if args.backend == "vllm":
        return vllm_worker(args, prompts, settings, precision)
    model = DecodeModel(load_model(args.model).eval(), precision).model  # weights in `precision`
    model.to(device)
    if args.backend in ("transformers_static", "transformers_compiled"):
        model.generation_config.cache_implementation = "static"
    backend = "prefopt" if args.backend == "prefopt" else "transformers"
    warm_prompts, warm = prompts[:2], SamplingSettings(k=2, max_new_tokens=2, batch_size=args.batch)
    if args.backend == "transformers_compiled":
        from transformers import CompileConfig

        compiled = CompileConfig(fullgraph=False)
        compiled._compile_all_devices = True  # transformers' switch to compile on a CPU too
        model.generation_config.compile_config = compiled
        warm_prompts, warm = prompts, settings  # compile every shape the timed run takes
    sample(model, tokenizer, warm_prompts, warm, backend=backend, precision=precision)
    process = psutil.Process()
    base = peak = process.memory_info().rss
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.wait(0.02):  # 20 ms: fine enough for runs of seconds, light on the GIL
            peak = max(peak, process.memory_info().rss)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    results = sample(model, tokenizer, prompts, settings, backend=backend, precision=precision)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    tokens = sum(len(s.token_ids) for samples in results for s in samples)
    on_gpu = device.type == "cuda"  # memory: the GPU's peak above the model; no CPU roofline
    above = (torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()) if on_gpu else (
        peak - base)  # fmt: skip
    from torch._dynamo.utils import counters

    return {"backend": args.backend, "seconds": seconds, "tokens": tokens,
            "compiled_graphs": counters["stats"]["unique_graphs"],
            "tokens_per_s": tokens / seconds, "peak_above_model_mb": above / 2**20,
            "prompt_tokens": sum(map(len, prompts)) / len(prompts), "precision": precision,
            "roofline_seconds": float("nan") if on_gpu else
            roofline(model, [len(p) for p in prompts], k, args, precision)}  # fmt: skip


def vllm_worker(args, prompts, settings, precision: str) -> dict:
    """The same workload on vLLM (GPU machines): an engine made once, warmed, then timed."""
    import dataclasses

    from prefopt.generate.vllm_backend import VllmSampler

    sampler = VllmSampler(args.model, precision, seed=0)
    sampler.sample(prompts[:2], dataclasses.replace(settings, k=2, max_new_tokens=2,
                                                    min_new_tokens=0))  # fmt: skip
    started = time.perf_counter()
    results = sampler.sample(prompts, settings)
    seconds = time.perf_counter() - started
    tokens = sum(len(s.token_ids) for samples in results for s in samples)
    return {"backend": "vllm", "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "peak_above_model_mb": float("nan"),
            "precision": precision, "roofline_seconds": float("nan")}  # fmt: skip


def roofline(model, prompt_lengths: list[int], k: int, args, precision: str) -> float:
    """The decode steps' physical limit, summed: per step, max(FLOPs / GEMM rate, bytes / copy
    bandwidth), the batches as the sampler forms them (prompts sorted by length)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from decode_profile import machine_rates, step_cost

    rates = machine_rates(torch.bfloat16 if precision == "bf16" else torch.float32)
    lengths, total = sorted(prompt_lengths), 0.0
    for start in range(0, len(lengths), args.batch):
        batch = lengths[start : start + args.batch]
        rows = len(batch) * k
        for t in range(args.max_new_tokens):
            flops, bytes_read = step_cost(
                model, rows, sum(batch) / len(batch) + t, sum(batch) + rows * t, precision
            )
            total += max(flops / rates["gemm_flops"], bytes_read / rates["copy_bytes"])
    return total


def measure(args, backend: str, workload: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--backend", backend, "--workload", workload,
               "--model", args.model, "--batch", str(args.batch), "--max-new-tokens",
               str(args.max_new_tokens), "--precision", args.precision,
               "--prompts", str(args.prompts)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{backend} worker failed on {workload}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=64, help="prompts decoded together (both)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--prompts", type=int, default=0, help="prompts a workload (0: its own)")
    parser.add_argument("--quick", action="store_true", help="4 prompts, 8 new tokens")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--vllm", action="store_true", help="vLLM too (GPU machines)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="prefopt", choices=(*BACKENDS, "vllm"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--workload", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.prompts, args.max_new_tokens = 4, 8
    rows = []
    print(f"{'workload':>10} {'prec':>5} {'prefopt s':>9} {'tok/s':>7} {'hf dyn s':>8} "
          f"{'hf static s':>11} {'hf compiled s':>13} {'speedup':>8} {'roofline s':>10} "
          f"{'reached':>8} {'MB above model ours / theirs':>29}")  # fmt: skip
    for workload in args.workloads.split(","):
        results = {backend: measure(args, backend, workload)
                   for backend in (*BACKENDS, "vllm")[: len(BACKENDS) + args.vllm]}  # fmt: skip
        ours = results["prefopt"]
        theirs = min((results[b] for b in BACKENDS[1:]), key=lambda r: r["seconds"])
        row = {"workload": workload, **results, "fastest_transformers": theirs["backend"],
               "speedup": theirs["seconds"] / ours["seconds"],
               "reached": ours["roofline_seconds"] / ours["seconds"],
               "memory_ratio": ours["peak_above_model_mb"] / max(theirs["peak_above_model_mb"], 1)}  # fmt: skip
        rows.append(row)
        print(f"{workload:>10} {ours['precision']:>5} {ours['seconds']:9.1f} "
              f"{ours['tokens_per_s']:7.0f} {results['transformers']['seconds']:8.1f} "
              f"{results['transformers_static']['seconds']:11.1f} "
              f"{results['transformers_compiled']['seconds']:13.1f} {row['speedup']:7.2f}x "
              f"{ours['roofline_seconds']:10.2f} {row['reached']:7.1%} "
              f"{ours['peak_above_model_mb']:13.0f} / {theirs['peak_above_model_mb']:<13.0f}"
              + (f"  vLLM {results['vllm']['seconds']:.1f} s" if args.vllm else ""),
              flush=True)  # fmt: skip
    if args.json:
        from decode_profile import machine

        record = {"settings": vars(args), "machine": machine(), "results": rows}
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
