"""prefopt rl against TRL's GRPOTrainer on the same model, prompts, reward function and settings:
the demo's instruction-following prompts, the `constraints` verifier as the one reward function
both call, K answers of at most 64 new tokens at temperature 1, LoRA r16 on every projection,
one optimizer step per step over `--prompts-per-step` groups, β = 0, token-level aggregation (TRL's
default loss_type "dapo"; prefopt's `grpo` with `aggregation: token`), ε = 0.2, no dynamic sampling.
Each tool at its defaults for memory: TRL with gradient checkpointing and a step's completions in
one forward pass (`--no-gradient-checkpointing`, `--trl-completions-per-forward N` with gradient
accumulation filling the step), prefopt in passes of `max_tokens_per_forward` tokens without
checkpointing (`--max-tokens-per-forward N`, 0 for one pass; `--prefopt-gradient-checkpointing`).
Each tool runs in a process of its own, alternating. Prints seconds per step (prefopt's split into
sampling, scoring and training; TRL's into generate-and-score and the rest), generated tokens/s,
peak RSS and the mean reward over the steps, side by side.

Workloads: the demo's prompts at K = 4 and K = 8 (`demo:4`, `demo:8`), and the same prompts each
after a ≈ 350-token passage, ≈ 400 tokens in all, at K = 8 (`long:8`), where encoding a prompt
once for its K answers matters most.

    python benchmarks/rl_vs_trl.py --steps 3 --json out.json     # every workload
    python benchmarks/rl_vs_trl.py --quick --workloads demo:4   # 2 steps of 4 prompts
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def reward(prompt, completion, record) -> float:
    from prefopt.oracles.constraints import check_constraints

    checks = check_constraints(prompt, completion, record)
    return sum(checks.values()) / len(checks)


def run_prefopt(args, prompts: Path, out: Path) -> dict:
    from rich.console import Console

    from prefopt.rl import RLConfig, rl

    config = RLConfig(
        model=args.model, prompts=str(prompts), output_dir=str(out),
        oracle_options={"function": f"{Path(__file__).resolve()}:reward"},
        objective="grpo", loss_params={"aggregation": "token"}, k=args.k,
        prompts_per_step=args.prompts_per_step, max_new_tokens=args.max_new_tokens,
        dynamic_sampling=False, max_steps=args.steps, learning_rate=args.lr, precision=args.precision,
        save_every=None, seed=args.seed, gradient_checkpointing=args.prefopt_gradient_checkpointing,
        **({} if args.max_tokens_per_forward is None else
           {"max_tokens_per_forward": args.max_tokens_per_forward or None}),
    )  # fmt: skip
    started = time.perf_counter()
    rl(config, console=Console(quiet=True))
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["seconds/sample"] + r["seconds/score"] + r["seconds/train"] for r in rows]
    tokens = sum(r["completions/mean_length"] * args.k * args.prompts_per_step for r in rows)
    return {
        "seconds_per_step": steps, "sample": [r["seconds/sample"] for r in rows],
        "score": [r["seconds/score"] for r in rows], "train": [r["seconds/train"] for r in rows],
        "generated_tokens_per_s": tokens / sum(r["seconds/sample"] for r in rows),
        "reward": [r["reward"] for r in rows], "peak_rss_gb": peak_rss_gb(), "wall": seconds,
    }  # fmt: skip


def run_trl(args, prompts: Path, out: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from prefopt.engine.model import resolve_model_path

    path = resolve_model_path(args.model)
    rows = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]
    dataset = datasets.Dataset.from_list(rows)

    def constraints_reward(prompts, completions, constraints, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [
            reward(p, t, {"constraints": c})
            for p, t, c in zip(prompts, texts, constraints, strict=True)
        ]

    completions = args.k * args.prompts_per_step
    per_forward = args.trl_completions_per_forward or completions
    if completions % per_forward:
        raise SystemExit(f"--trl-completions-per-forward {per_forward} does not divide a step's "
                         f"{completions} completions")  # fmt: skip
    config = GRPOConfig(
        output_dir=str(out), num_generations=args.k, per_device_train_batch_size=per_forward,
        gradient_accumulation_steps=completions // per_forward,
        max_completion_length=args.max_new_tokens, temperature=1.0,
        learning_rate=args.lr, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        max_steps=args.steps, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        bf16=args.precision == "bf16", seed=args.seed, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, num_iterations=1,
        gradient_checkpointing=args.gradient_checkpointing,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=targets
    )
    trainer = GRPOTrainer(model=model, reward_funcs=constraints_reward, args=config,
                          train_dataset=dataset, processing_class=tokenizer, peft_config=lora)  # fmt: skip
    generate = trainer._generate_and_score_completions
    timings: dict[str, list[float]] = {"generate_and_score": [], "step": []}

    def timed(*a, **k):
        started = time.perf_counter()
        result = generate(*a, **k)
        timings["generate_and_score"].append(time.perf_counter() - started)
        return result

    trainer._generate_and_score_completions = timed

    class Steps(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            timings["step"].append(time.perf_counter() - self.started)

    trainer.add_callback(Steps())
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    lengths = [entry.get("completions/mean_length", 0.0) for entry in logs]
    return {
        "seconds_per_step": timings["step"], "generate_and_score": timings["generate_and_score"],
        "generated_tokens_per_s": sum(lengths) * completions / sum(timings["generate_and_score"]),
        "reward": [entry["reward"] for entry in logs], "peak_rss_gb": peak_rss_gb(), "wall": wall,
    }  # fmt: skip


PASSAGE = (
    "The old mill stood by the river for two hundred years. Boats came in the morning with grain "
    "and left in the evening with flour, and the miller kept a book of every load. "
)


def workload_prompts(name: str, folder: Path) -> Path:
    """The demo's training prompts; for `long`, each after a passage of ≈ 350 tokens."""
    from prefopt.demo import write_task

    path = write_task(folder / "task")["train"]
    if name == "demo":
        return path
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        row["prompt"][-1]["content"] = PASSAGE * 9 + "\n\n" + row["prompt"][-1]["content"]
    long = folder / "long.jsonl"
    long.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return long


def worker(args) -> None:
    prompts, out = Path(args.prompts_file), Path(args.out)
    result = (run_prefopt if args.tool == "prefopt" else run_trl)(args, prompts, out)
    print("RESULT " + json.dumps(result), flush=True)


def measure(args, tool: str, k: int, prompts: Path, folder: Path) -> dict:
    command = [sys.executable, __file__, "--worker", tool, "--k", str(k), "--prompts-file", str(prompts),
               "--out", str(folder / f"{tool}-{k}"), "--steps", str(args.steps),
               "--prompts-per-step", str(args.prompts_per_step), "--max-new-tokens",
               str(args.max_new_tokens), "--lr", str(args.lr), "--precision", args.precision,
               "--model", args.model, "--seed", str(args.seed),
               *([] if args.gradient_checkpointing else ["--no-gradient-checkpointing"]),
               *(["--prefopt-gradient-checkpointing"] if args.prefopt_gradient_checkpointing else []),
               *([] if args.max_tokens_per_forward is None else
                 ["--max-tokens-per-forward", str(args.max_tokens_per_forward)]),
               *([] if args.trl_completions_per_forward is None else
                 ["--trl-completions-per-forward", str(args.trl_completions_per_forward)])]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{tool} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=["prefopt", "trl"], dest="tool")
    parser.add_argument("--prompts-file")
    parser.add_argument("--out")
    parser.add_argument("--model", default="default")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--workloads", default="demo:4,demo:8,long:8", help="NAME:K,...")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                        action="store_false", help="TRL's (on by default: its default)")  # fmt: skip
    parser.add_argument("--trl-completions-per-forward", type=int,
                        help="TRL's per_device_train_batch_size (default: a step's completions)")  # fmt: skip
    parser.add_argument("--max-tokens-per-forward", type=int,
                        help="prefopt's (default: its default; 0: one pass)")  # fmt: skip
    parser.add_argument("--prefopt-gradient-checkpointing", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.tool:
        return worker(args)
    if args.quick:
        args.steps, args.prompts_per_step = 2, 4
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        results = {}
        for workload in args.workloads.split(","):
            name, k = workload.split(":")
            prompts = workload_prompts(name, folder)
            results[workload] = {tool: measure(args, tool, int(k), prompts, folder / workload)
                                 for tool in ("prefopt", "trl")}  # fmt: skip
    trl = ("checkpointing" if args.gradient_checkpointing else "no checkpointing") + (
        f", {args.trl_completions_per_forward} completions a forward"
        if args.trl_completions_per_forward
        else ", a step's completions in one forward"
    )
    passes = {None: "default", 0: "none"}.get(args.max_tokens_per_forward,
                                              str(args.max_tokens_per_forward))  # fmt: skip
    ours = ("checkpointing, " if args.prefopt_gradient_checkpointing else "") + (
        f"max_tokens_per_forward {passes}")  # fmt: skip
    print(f"{args.prompts_per_step} prompts a step, {args.max_new_tokens} new tokens, LoRA r16, {args.precision}, "
          f"TRL: {trl}; prefopt: {ours}; {args.steps} steps (the first of each run left out of the "
          "step times)")  # fmt: skip
    print(f"{'workload':>8} {'tool':8} {'s/step':>8} {'sample':>8} {'score':>7} {'train':>7} {'gen tok/s':>10} "
          f"{'peak GB':>8} {'reward':>7}")  # fmt: skip
    for workload, pair in results.items():
        for tool, r in pair.items():
            later = lambda key, r=r: mean(r[key][1:] or r[key])
            steps = r["seconds_per_step"][1:] or r["seconds_per_step"]
            if tool == "prefopt":
                split = f"{later('sample'):8.1f} {later('score'):7.1f} {later('train'):7.1f}"
            else:
                split = f"{later('generate_and_score'):8.1f} {'':7} {'':7}"
            print(f"{workload:>8} {tool:8} {mean(steps):8.1f} {split} {r['generated_tokens_per_s']:10.0f} "
                  f"{r['peak_rss_gb']:8.2f} {mean(r['reward']):7.3f}")  # fmt: skip
        ours, theirs = pair["prefopt"], pair["trl"]
        speed = mean(theirs["seconds_per_step"][1:] or theirs["seconds_per_step"]) / mean(
            ours["seconds_per_step"][1:] or ours["seconds_per_step"]
        )
        print(f"    {workload}: prefopt {speed:.2f}× faster a step, {ours['peak_rss_gb'] / theirs['peak_rss_gb']:.2f}× "
              "the peak memory")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
