"""prefopt's sampler against transformers' generate(num_return_sequences=K) on the same model,
prompts, sampling settings and batch: one process per measurement, alternating, for K = 4 and 8
and short (≈50-token) and long (≈400-token) prompts. Prints generated tokens/s and peak memory
above the loaded model, side by side with the ratios; --json saves them.

    python benchmarks/generate.py                       # the default model, every workload
    python benchmarks/generate.py --quick               # two prompts a workload, 16 new tokens
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

WORDS = (
    "the river runs past the old mill where seven green boats wait for the morning light while "
    "quiet music drifts over the water and a paper window glows above the garden table"
).split()


def prompt_text(index: int, words: int) -> str:
    body = " ".join(WORDS[(index * 7 + i) % len(WORDS)] for i in range(words))
    return f"Story {index}: {body}. Continue the story in your own words."


def worker(args) -> dict:
    import psutil
    import torch

    from prefopt.engine.model import load_model, load_tokenizer
    from prefopt.engine.precision import choose_precision
    from prefopt.generate.sampling import SamplingSettings, sample

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    precision, _ = choose_precision(args.precision, torch.device("cpu"))
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt_text(i, args.words)}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for i in range(args.prompts)
    ]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) else list(p) for p in prompts]
    # every completion runs to max_new_tokens on both sides (no early end-of-sequence), so both
    # generate exactly the same number of tokens and tokens/s compares like with like
    settings = SamplingSettings(
        k=args.k,
        temperature=1.0,
        top_p=0.95,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.max_new_tokens,
        seed=0,
        batch_size=args.batch,
    )
    # warm-up: first-call allocations and kernel choices
    sample(
        model,
        tokenizer,
        [prompts[0][:16]],
        SamplingSettings(k=2, max_new_tokens=2),
        backend=args.backend,
        precision=precision,
    )
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def watch():
        while not done.wait(0.02):  # 20 ms: fine enough for runs of seconds, light on the GIL
            peak[0] = max(peak[0], process.memory_info().rss)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    results = sample(model, tokenizer, prompts, settings, backend=args.backend, precision=precision)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    tokens = sum(len(s.token_ids) for samples in results for s in samples)
    return {
        "backend": args.backend,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_above_model_mb": (peak[0] - base) / 2**20,
        "peak_rss_mb": peak[0] / 2**20,
        "prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "precision": precision,
    }


def measure(args, backend: str, k: int, words: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--backend",
        backend,
        "--k",
        str(k),
        "--words",
        str(words),
        "--model",
        args.model,
        "--prompts",
        str(args.prompts),
        "--batch",
        str(args.batch),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--precision",
        args.precision,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{backend} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per workload")
    parser.add_argument("--batch", type=int, default=4, help="prompts decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--ks", default="4,8")
    parser.add_argument("--workloads", default="short,long")
    parser.add_argument(
        "--quick", action="store_true", help="2 prompts, 16 new tokens: a smoke check"
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="prefopt", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--words", type=int, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.prompts, args.max_new_tokens = 2, 16
    words = {"short": 6, "long": 330}  # ≈50 and ≈400 tokens once the chat template wraps them
    rows = []
    print(
        f"{'workload':>10} {'K':>2} {'prompt tok':>10} {'prefopt tok/s':>14} {'transformers tok/s':>19} "
        f"{'speedup':>8} {'peak MB prefopt / transformers':>31} {'ratio':>6}"
    )
    for workload in args.workloads.split(","):
        for k in map(int, args.ks.split(",")):
            ours = measure(args, "prefopt", k, words[workload])  # alternating: one of each in turn
            theirs = measure(args, "transformers", k, words[workload])
            row = {
                "workload": workload,
                "k": k,
                "prefopt": ours,
                "transformers": theirs,
                "speedup": ours["tokens_per_s"] / theirs["tokens_per_s"],
                "memory_ratio": ours["peak_above_model_mb"]
                / max(theirs["peak_above_model_mb"], 1e-9),
            }
            rows.append(row)
            print(
                f"{workload:>10} {k:>2} {ours['prompt_tokens']:>10.0f} {ours['tokens_per_s']:>14.1f} "
                f"{theirs['tokens_per_s']:>19.1f} {row['speedup']:>7.2f}× "
                f"{ours['peak_above_model_mb']:>14.0f} / {theirs['peak_above_model_mb']:<14.0f} "
                f"{row['memory_ratio']:>6.2f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "results": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
