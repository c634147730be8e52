"""prefopt against TRL's DPOTrainer on the same model, data and hyperparameters.

Each measurement runs in a process of its own (prefopt and TRL alternating), so peak memory is
per run (peak RSS on a CPU, peak GPU memory allocated by torch on a GPU).
Workloads (synthetic text of controlled token lengths, seeded):
  pairs         prompt + chosen + rejected ≈ 510 tokens, DPO on both sides
  long_prompts  ≈ 400-token prompt, ≈ 80-token completions, DPO on both sides
  lists         ranked lists of K = 4: prefopt with a listwise loss (Plackett–Luce) on each list,
                TRL with DPO on all 6 pairs of each list
Epoch time counts the reference pass and the optimizer steps (not model loading or
tokenization) on both sides. TRL needs `pip install -e '.[bench]'`.

    python benchmarks/vs_trl.py --quick                     # < 3 minutes
    python benchmarks/vs_trl.py --json results.json         # the full table
    python benchmarks/vs_trl.py --lora --repeats 2          # LoRA both sides, fastest of 2 runs each
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    # name: (lists, prompt tokens, completion tokens, K)
    "pairs": (64, 170, 170, 2),
    "long_prompts": (48, 400, 80, 2),
    "lists": (24, 120, 90, 4),
}
QUICK = {"pairs": (2, 48, 48, 2), "long_prompts": (2, 120, 24, 2), "lists": (1, 32, 24, 4)}
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there can all their one been if more when will would who so no model data train "
    "rank list prompt answer better worse score human label prefer policy reward value"
).split()


def synthetic_lists(
    tokenizer, count: int, prompt_tokens: int, completion_tokens: int, k: int, seed: int
) -> list:
    rng = random.Random(seed)

    def text(tokens: int) -> str:
        words = [rng.choice(WORDS) for _ in range(tokens)]
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) > tokens:
            words.pop()
        return " ".join(words)

    return [
        {
            "prompt": text(prompt_tokens),
            "completions": [text(completion_tokens) for _ in range(k)],
            "scores": list(range(k, 0, -1)),
        }
        for _ in range(count)
    ]


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch on a GPU, else the process's peak RSS (GiB)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def steady(step_seconds: list[float]) -> float | None:
    """The median step time past the first three (which pay for compilation and first page faults)."""
    later = sorted(step_seconds[3:])
    return later[len(later) // 2] if later else None


# ATen ops that are matrix products (dense GEMMs and their fused-add forms)
_GEMM_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_addmm_activation",
}


class StepProfile:
    """torch.profiler over one optimizer step (the `step`-th, counted from 1), its time split into
    GEMMs, attention kernels and everything else (elementwise work, copies, the optimizer, Python).
    `lists` is how many of the workload's lists a step trains on (TRL's 4 pairs of lists of 4 are
    4/6 of a list). `begin(n)` / `end(n)` bracket step n; `result()` is None until it was profiled."""

    def __init__(self, step: int | None, lists: float):
        self.step, self.lists, self.profiler, self.split = step, lists, None, None

    def begin(self, step: int) -> None:
        if step == self.step:
            import torch

            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            self.started = time.perf_counter()

    def end(self, step: int) -> None:
        if step != self.step or self.profiler is None:
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.started
        self.profiler.stop()
        on_gpu = torch.cuda.is_available()
        split = {"gemm_s": 0.0, "attention_s": 0.0}
        for event in self.profiler.key_averages():
            spent = (event.self_device_time_total if on_gpu else event.self_cpu_time_total) / 1e6
            if event.key in _GEMM_OPS or (on_gpu and "gemm" in event.key.lower()):
                split["gemm_s"] += spent
            elif "scaled_dot_product" in event.key or "flash" in event.key.lower():
                split["attention_s"] += spent
        split["other_s"] = max(seconds - split["gemm_s"] - split["attention_s"], 0.0)
        self.split = split | {"step_s": seconds, "step": self.step, "lists": self.lists}
        self.profiler = None

    def close(self) -> None:
        """Stop a profile begun for a step that never ran (prefopt's begins when the step before ends)."""
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None

    def result(self) -> dict | None:
        return self.split


def trl_step_profile(profile: StepProfile):
    """A transformers TrainerCallback that runs `profile` over its step."""
    from transformers import TrainerCallback

    class Profiled(TrainerCallback):
        def on_step_begin(self, _args, state, *_, **__):
            profile.begin(state.global_step + 1)

        def on_step_end(self, _args, state, *_, **__):
            profile.end(state.global_step)

    return Profiled()


def prefopt_step_profile(profile: StepProfile):
    """An `on_step` callback of prefopt's training loop that runs `profile` over its step (it is
    called after each step: step n's profile starts when step n − 1 ends)."""

    def on_step(state, _record) -> None:
        profile.end(state.step)
        profile.begin(state.step + 1)

    return on_step


def print_step_profiles(console, results: dict) -> None:
    """Where one profiled step's time went, per workload and tool, and what that bounds: TRL's time
    a list over prefopt's GEMM time alone a list is the speedup prefopt would have if all its other
    work took no time."""
    from rich.table import Table

    profiled = {
        w: row
        for w, row in results.items()
        if row["prefopt"].get("profile") and row["trl"].get("profile")
    }
    for workload in results.keys() - profiled.keys():
        console.print(
            f"[yellow]{workload}: no profile (--profile-step past one tool's last step)[/]"
        )
    if not profiled:
        return
    table = Table(title="one profiled step (seconds; the profiler adds its own overhead to both)")
    for column in (
        "workload",
        "tool",
        "lists",
        "step",
        "GEMMs",
        "attention",
        "other",
        "GEMM share",
        "bound a list if only GEMMs",
    ):
        table.add_column(column, justify="right")
    for workload, row in profiled.items():
        trl = row["trl"]["profile"]
        for tool in ("prefopt", "trl"):
            p = row[tool]["profile"]
            bound = ""
            if tool == "prefopt" and p["gemm_s"]:
                bound = f"{(trl['step_s'] / trl['lists']) / (p['gemm_s'] / p['lists']):.2f}×"
            seconds = (f"{p[key]:.2f}" for key in ("step_s", "gemm_s", "attention_s", "other_s"))
            table.add_row(
                workload,
                tool,
                f"{p['lists']:.2f}",
                *seconds,
                f"{p['gemm_s'] / p['step_s']:.0%}",
                bound,
            )
    console.print(table)


def prefopt_step_seconds(metrics_file: Path, batch_size: int) -> list[float]:
    """Each training step's seconds from a run's metrics.jsonl: its lists over its lists per second
    (the last step may hold fewer lists than `batch_size`; the median reads past it)."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return [batch_size / r["lists_per_s"] for r in records if r.get("split") == "train"]


def trl_step_timer(step_seconds: list[float]):
    """A transformers TrainerCallback that appends each optimizer step's seconds to `step_seconds`."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_seconds.append(time.perf_counter() - self.started)

    return StepTimes()


def run_prefopt(args, rows, model_path: str) -> dict:
    from prefopt.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        loss = "plackett_luce" if len(rows[0]["completions"]) > 2 else "dpo"
        config = TrainConfig(
            model=model_path,
            data=str(data),
            output_dir=str(Path(folder) / "run"),
            loss=loss,
            loss_params={loss: {"beta": args.beta}},
            lora=args.lora,
            precision=args.precision,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            epochs=1,
            eval_fraction=0.0,
            warmup_ratio=0.0,
            scheduler="constant",
            max_prompt_tokens=args.max_length,
            max_completion_tokens=args.max_length,
            chat_template="never",
            reference_cache=False,
            max_grad_norm=None,
            gradient_checkpointing=args.checkpointing,
            compile=args.compile,
        )
        result = train(config)
        first = json.loads((Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()[0])
        steps = prefopt_step_seconds(Path(folder) / "run" / "metrics.jsonl", args.batch_size)
    return {
        "seconds": result.reference_seconds + result.loop_seconds,
        "reference_seconds": result.reference_seconds,
        "step1_loss": first["loss"],
        "steps": result.steps,
        "peak_memory_gb": peak_memory_gb(),
        "steady_step_seconds": steady(steps),
    }


def run_trl(args, rows, model_path: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from prefopt.engine.hostmem import keep_freed_memory

    class TimedDPOTrainer(DPOTrainer):
        """With precompute_ref_log_probs, TRL runs its reference pass inside the constructor; timed
        here so that it counts, as prefopt's reference pass does."""

        reference_seconds = 0.0

        def _precompute_ref_logps(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                self.reference_seconds += time.perf_counter() - started

    pairs = [
        {
            "prompt": row["prompt"],
            "chosen": row["completions"][i],
            "rejected": row["completions"][j],
        }
        for row in rows
        for i in range(len(row["completions"]))
        for j in range(i + 1, len(row["completions"]))
    ]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    options = trl_gpu_options(args)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                 **options["model"])  # fmt: skip
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        )
    with tempfile.TemporaryDirectory() as folder:
        config = DPOConfig(
            output_dir=folder,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            beta=args.beta,
            max_length=2 * args.max_length,
            num_train_epochs=1,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            bf16=args.precision == "bf16",
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=0.0,
            precompute_ref_log_probs=args.trl_precompute,
            gradient_checkpointing=args.checkpointing,
            dataloader_num_workers=0,
            seed=0,
            torch_compile=args.compile,
            **options["config"],
        )
        step_seconds = []
        # prefopt keeps freed memory in the process while it trains on a CPU; this gives TRL the same
        with keep_freed_memory(
            enabled=args.trl_keep_freed_memory and not torch.cuda.is_available()
        ):
            trainer = TimedDPOTrainer(
                model=model,
                args=config,
                train_dataset=datasets.Dataset.from_list(pairs),
                processing_class=tokenizer,
                peft_config=peft_config,
                callbacks=[trl_step_timer(step_seconds)],
            )
            if args.trl_precompute and not trainer.reference_seconds:
                raise SystemExit(
                    "TRL's reference pass was not timed: DPOTrainer no longer calls _precompute_ref_logps"
                )
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "seconds": trainer.reference_seconds + seconds,
        "reference_seconds": trainer.reference_seconds,
        "step1_loss": losses[0],
        "steps": trainer.state.global_step,
        "peak_memory_gb": peak_memory_gb(),
        "steady_step_seconds": steady(step_seconds),
    }


def required_flops(model_path: str, lengths: list[tuple[int, list[int]]], lora: bool) -> dict:
    """Model FLOPs of one epoch of the work itself, the same numbers for both tools, from each
    list's (prompt tokens, [completion tokens]): every prompt once and every completion once per
    list, forward and backward, one reference forward, the LM head at completion positions only.
    Linear layers: backward ≈ 2 forwards (≈ 1 with LoRA, whose frozen weights need no gradient).
    Attention (QKᵀ and PV, 4·d FLOPs per (query, key) pair and layer, as in PaLM's MFU): only the
    pairs the work needs (a prompt causally, each completion against its prompt and causally
    itself); its backward ≈ 2 forwards with or without LoRA (dQ, dK, dV, dP). Returns `total` and
    `without_attention` (the count of earlier versions of this script)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    hidden, vocab, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = head_dim * config.num_key_value_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.intermediate_size
    body = 2 * layers * per_layer  # forward FLOPs per token
    head = 2 * hidden * vocab  # forward FLOPs per completion token
    prompt_tokens = sum(prompt for prompt, _ in lengths)
    completion_tokens = sum(sum(completions) for _, completions in lengths)
    pairs = sum(
        prompt * (prompt + 1) // 2 + sum(c * prompt + c * (c + 1) // 2 for c in completions)
        for prompt, completions in lengths
    )
    attention = 4 * head_dim * config.num_attention_heads * layers * pairs  # forward
    passes = 3 if lora else 4  # forward + backward (2 or 1) + reference forward
    linear = passes * (body * (prompt_tokens + completion_tokens) + head * completion_tokens)
    return {"total": linear + 4 * attention, "without_attention": linear}


def trl_gpu_options(args) -> dict:
    """TRL at its GPU fastest where asked and installed: FlashAttention 2 with padding-free
    batches, Liger's fused DPO loss."""
    import importlib.util

    if not args.trl_gpu_fastest:
        return {"model": {}, "config": {}}
    flash = importlib.util.find_spec("flash_attn") is not None
    liger = importlib.util.find_spec("liger_kernel") is not None
    print(
        f"TRL: FlashAttention 2 {'on' if flash else 'not installed'}, padding_free {flash}, "
        f"Liger {'on' if liger else 'not installed'}",
        file=sys.stderr,
    )
    return {"model": {"attn_implementation": "flash_attention_2"} if flash else {},
            "config": {"padding_free": flash, "use_liger_kernel": liger}}  # fmt: skip


def worker(args) -> None:
    from prefopt.engine.model import resolve_model_path

    model_path = resolve_model_path(args.model)
    import torch
    from transformers import AutoTokenizer

    from prefopt.engine.precision import matmul_gflops

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    count, *lengths = (QUICK if args.quick else WORKLOADS)[args.workload]
    rows = synthetic_lists(tokenizer, count * args.scale, *lengths, seed=0)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    # + EOS
    lengths = [(count(r["prompt"]), [count(c) + 1 for c in r["completions"]]) for r in rows]
    data_tokens = sum(prompt + sum(completions) for prompt, completions in lengths)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    on_gpu = torch.cuda.is_available()
    # the precision used: the best of 3 readings (one reading on a busy 2-core machine can be half
    # the real peak); the other precision, one smaller reading (bf16 on a CPU without matrix units
    # runs ~1 GFLOP/s: 1024² takes ~8 s a reading, 512² ~1 s at the same rate)
    reading = lambda kind: matmul_gflops(
        kind,
        size=8192 if on_gpu else 1024 if kind == dtype else 512,
        repeats=20 if on_gpu else 4,
        device="cuda" if on_gpu else "cpu",
    )
    peaks = {
        name: max(reading(kind) for _ in range(3 if kind == dtype else 1)) * 1e9
        for name, kind in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    peak = peaks["bf16" if dtype == torch.bfloat16 else "fp32"]
    result = (run_prefopt if args.worker == "prefopt" else run_trl)(args, rows, model_path)
    flops = required_flops(model_path, lengths, args.lora)
    achieved = flops["total"] / result["seconds"]
    result |= {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "lists": len(rows),
        "data_tokens": data_tokens,
        "lists_per_s": len(rows) / result["seconds"],
        "tokens_per_s": data_tokens / result["seconds"],
        "model_tflops": flops["total"] / 1e12,
        "peak_gflops": peak / 1e9,
        "mfu": achieved / peak,
        "mfu_without_attention": flops["without_attention"] / result["seconds"] / peak,
        # the yardstick is the bf16 peak; where bf16 is the slower (CPUs without matrix
        # units) the stricter yardstick is the faster of the two
        "bf16_peak_gflops": peaks["bf16"] / 1e9,
        "mfu_of_best_peak": achieved / max(peaks.values()),
    }
    print("RESULT " + json.dumps(result), flush=True)


def measure(args, framework: str, workload: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        framework,
        "--workload",
        workload,
        "--model",
        args.model,
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--beta",
        str(args.beta),
        "--max-length",
        str(args.max_length),
        "--precision",
        args.precision,
        "--scale",
        str(args.scale),
    ]
    command += (
        ["--quick"] * args.quick
        + ["--lora"] * args.lora
        + ["--trl-precompute"] * args.trl_precompute
    )
    command += ["--checkpointing"] * args.checkpointing + [
        "--trl-keep-freed-memory"
    ] * args.trl_keep_freed_memory
    command += ["--compile"] * args.compile + ["--trl-gpu-fastest"] * args.trl_gpu_fastest
    return run_worker(
        command,
        args.cache,
        f"{framework} on {workload}",
        huge_pages=framework == "prefopt" or args.trl_huge_pages,
    )


def run_worker(command: list[str], cache: str, label: str, huge_pages: bool = True) -> dict:
    """One measurement in a process of its own (so peak memory is its own), with its own prefopt
    cache folder; its result is the last line it prints as `RESULT {json}`. Without `huge_pages`,
    PyTorch's allocator runs as it does by default (importing prefopt turns its huge pages on)."""
    env = {**os.environ, "PREFOPT_CACHE": cache}
    if not huge_pages:
        env["THP_MEM_ALLOC_ENABLE"] = "0"
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{label} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def side_by_side(measure_tool, repeats: int) -> dict:
    """Both tools `repeats` times, alternating, so a slow spell of a shared machine hits both; the
    fastest run of each (time only goes up with noise), the largest peak memory, and the ratios."""
    runs = {"prefopt": [], "trl": []}
    for _ in range(repeats):
        for tool in runs:
            runs[tool].append(measure_tool(tool))
    best = {
        tool: min(measured, key=lambda r: r["seconds"])
        | {
            "all_seconds": [r["seconds"] for r in measured],
            "peak_memory_gb": max(r["peak_memory_gb"] for r in measured),
        }
        for tool, measured in runs.items()
    }
    prefopt, trl = best["prefopt"], best["trl"]
    return {
        "prefopt": prefopt,
        "trl": trl,
        "speedup": trl["seconds"] / prefopt["seconds"],
        "memory_ratio": prefopt["peak_memory_gb"] / trl["peak_memory_gb"],
        "step1_loss_difference": abs(prefopt["step1_loss"] - trl["step1_loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small data: finishes in under 3 minutes"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--model", default="default")
    parser.add_argument("--workloads", default="pairs,long_prompts,lists")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--scale", type=int, default=1, help="multiply the number of lists (for fast devices)"
    )
    parser.add_argument(
        "--lora", action="store_true", help="LoRA on both sides (reference = adapters off)"
    )
    parser.add_argument(
        "--trl-precompute", action="store_true", help="TRL precompute_ref_log_probs=True"
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing on both sides"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile on both sides (prefopt's compile: "
        "true, TRL's torch_compile); see the steady step time: compiling takes the first steps",
    )
    parser.add_argument(
        "--trl-keep-freed-memory",
        action="store_true",
        help="run TRL with the glibc allocator settings prefopt uses on a CPU (prefopt.engine.hostmem)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per tool and workload (the fastest is kept)"
    )
    parser.add_argument(
        "--trl-huge-pages",
        action="store_true",
        help="TRL with PyTorch's huge-page allocation "
        "too (THP_MEM_ALLOC_ENABLE=1, which importing prefopt sets); by default TRL runs without it",
    )
    parser.add_argument(
        "--trl-gpu-fastest",
        action="store_true",
        help="TRL with FlashAttention 2 + padding_free and Liger's loss, where installed (GPU)",
    )
    parser.add_argument("--worker", choices=["prefopt", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig

    from prefopt.engine.model import resolve_model_path

    # the model is resolved (a GGUF converted) once, into the user's cache; the workers get its folder
    # and a fresh cache folder of their own, so no reference log-probs carry over between runs
    try:
        args.model = str(resolve_model_path(args.model))
        AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as error:  # FileNotFoundError is an OSError
        raise SystemExit(f"--model {args.model}: {error}") from None
    args.cache = tempfile.mkdtemp(prefix="prefopt-bench-cache-")
    results = {
        workload: side_by_side(
            lambda tool, workload=workload: measure(args, tool, workload), args.repeats
        )
        for workload in args.workloads.split(",")
    }
    table = Table(
        title=f"prefopt vs TRL DPOTrainer ({'LoRA' if args.lora else 'full fine-tuning'}, "
        f"{args.precision}, batch {args.batch_size}{', checkpointing' * args.checkpointing}"
        f"{', compiled' * args.compile}"
        f"{', TRL precompute_ref_log_probs' * args.trl_precompute}"
        f"{', TRL keeps freed memory' * args.trl_keep_freed_memory}{', quick' if args.quick else ''}"
        f"{f', fastest of {args.repeats}' if args.repeats > 1 else ''})"
    )
    for column in (
        "workload",
        "tool",
        "epoch s",
        "step s (steady)",
        "tokens/s",
        "lists/s",
        "peak GB",
        "step-1 loss",
        "MFU (GFLOP/s)",
        "speedup",
        "memory ratio",
    ):
        table.add_column(column, justify="right")
    for workload, row in results.items():
        for tool in ("prefopt", "trl"):
            r = row[tool]
            ratios = (
                (f"{row['speedup']:.2f}×", f"{row['memory_ratio']:.2f}")
                if tool == "prefopt"
                else ("", "")
            )
            step = f"{r['steady_step_seconds']:.2f}" if r.get("steady_step_seconds") else "–"
            table.add_row(
                workload,
                tool,
                f"{r['seconds']:.1f}",
                step,
                f"{r['tokens_per_s']:.0f}",
                f"{r['lists_per_s']:.2f}",
                f"{r['peak_memory_gb']:.2f}",
                f"{r['step1_loss']:.5f}",
                f"{r['mfu']:.0%} of {r['peak_gflops']:.0f} ({r['mfu_without_attention']:.0%} without "
                f"attention; {r['mfu_of_best_peak']:.0%} of best; bf16 {r['bf16_peak_gflops']:.0f})",
                *ratios,
            )
    console = Console(width=160)
    console.print(table)
    for (
        workload,
        row,
    ) in results.items():  # both run DPO on pairs, both start at ln 2 (lists: PL vs DPO)
        if workload != "lists" and row["step1_loss_difference"] > 1e-3:
            console.print(
                f"[yellow]{workload}: step-1 losses differ by {row['step1_loss_difference']:.5f} (> 1e-3): "
                "at step 0 a policy equals its reference, so a DPO loss other than ln 2 = 0.69315 means "
                "that tool's reference log-probs differ from its policy's (a precision mismatch)[/]"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
