"""Does online RL work, and does it beat the loop, at the demo's budget of sampled answers? On the
demo's task (instruction following, the `constraints` verifier as the reward) and the embedded
model, each arm samples 1,152 answers from its policy (the loop: 3 rounds x 96 prompts x 4; rl:
18 steps x 16 prompts x 4, no dynamic sampling), then its final policy answers the 60 held-out
prompts and the 40 prompts of constraint types never trained on, greedily, and the verifier
measures both (the fraction of a prompt's constraints met, with a 95% bootstrap interval over
prompts), exactly as `prefopt demo` does. Arms: `prefopt loop` (the demo's), `prefopt rl` with
GRPO (DAPO's clip-higher) and with DisCO, and TRL's GRPOTrainer with the same reward function,
LoRA, learning rate, K, lengths and budget (loss_type "dapo", β = 0). Each arm in its own process.

    python benchmarks/rl_quality.py --json benchmarks/results-rl-quality.json
    python benchmarks/rl_quality.py --arms grpo,trl --steps 2    # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("trl", "grpo", "disco", "loop")


def run_arm(args, arm: str, folder: Path) -> dict:
    """Train one arm; returns its final policy's folder and its wall-clock seconds."""
    from rich.console import Console

    from prefopt.demo.run import RL_SETTINGS, demo

    started = time.perf_counter()
    quiet = Console(quiet=True)
    if arm == "loop":
        result = demo(folder / "loop", model=args.model, console=quiet, method="loop")
        final = result.arms[0].final_model
    elif arm in ("grpo", "disco"):
        params = RL_SETTINGS["loss_params"] if arm == "grpo" else {}
        result = demo(folder / arm, model=args.model, console=quiet, method="rl",
                      rl_settings={"objective": arm, "loss_params": params,
                                   "max_steps": args.steps, "learning_rate": args.lr})  # fmt: skip
        final = result.arms[0].final_model
    else:
        final = run_trl(args, folder / "trl")
    return {"model": str(final), "train_seconds": time.perf_counter() - started}


def run_trl(args, out: Path) -> Path:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from prefopt.demo import write_task
    from prefopt.demo.run import RL_SETTINGS
    from prefopt.engine.model import resolve_model_path

    task = write_task(out / "task")
    # conversational prompts (the task's own): TRL renders them with the chat template, as prefopt
    rows = [json.loads(line) for line in task["train"].read_text().splitlines() if line.strip()]

    sys.path.insert(0, str(Path(__file__).parent))
    from rl_vs_trl import reward  # the fraction of constraints met, as the verifier scores

    def constraints_reward(prompts, completions, constraints, **kwargs):
        return [reward(p[-1]["content"], c[-1]["content"], {"constraints": given})
                for p, c, given in zip(prompts, completions, constraints, strict=True)]  # fmt: skip

    k, prompts = RL_SETTINGS["k"], RL_SETTINGS["prompts_per_step"]
    config = GRPOConfig(
        output_dir=str(out), num_generations=k, per_device_train_batch_size=k * prompts,
        gradient_accumulation_steps=1, max_completion_length=RL_SETTINGS["max_new_tokens"],
        temperature=1.0, learning_rate=args.lr, beta=0.0, epsilon=0.2, epsilon_high=0.28,
        loss_type="dapo", scale_rewards="group", max_steps=args.steps, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, num_iterations=1,
    )  # fmt: skip
    path = resolve_model_path(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=targets)  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=constraints_reward, args=config,
                          train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora)  # fmt: skip
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    return out / "merged"


def measure(model: str, folder: Path) -> dict:
    """The demo's measurement of a policy: greedy answers to the held-out prompts and to the
    unseen constraint types, scored by the verifier."""
    import torch
    from rich.console import Console

    from prefopt.demo import write_task
    from prefopt.demo.run import LOOP_SETTINGS, _answers
    from prefopt.demo.task import satisfaction
    from prefopt.engine.precision import decode_precision

    task = write_task(folder / "task")
    return {"decode_precision": decode_precision("auto", torch.device("cpu"))} | {
        which: satisfaction(_answers(model, task[which], folder / f"{which}.jsonl", LOOP_SETTINGS,
                                     Console(quiet=True)))["score"]
        for which in ("heldout", "unseen")
    }  # fmt: skip


def worker(args) -> None:
    folder = Path(args.out)
    result = run_arm(args, args.arm, folder)
    result |= measure(result["model"], folder / "measure")
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", dest="arm", choices=ARMS)
    parser.add_argument("--out")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=18, help="rl steps (16 prompts x 4 answers)")
    parser.add_argument("--lr", type=float, default=5e-4, help="rl's and TRL's learning rate")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.arm:
        return worker(args)
    from prefopt.engine.model import resolve_model_path

    resolve_model_path(args.model)  # the default model's conversion, done once, outside the arms
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        initial = measure(args.model, Path(folder) / "initial")
        for arm in args.arms.split(","):
            command = [sys.executable, __file__, "--worker", arm, "--out", f"{folder}/{arm}",
                       "--model", args.model, "--steps", str(args.steps), "--lr", str(args.lr)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"{arm} failed:\n{done.stderr[-3000:]}")
            results[arm] = json.loads(lines[-1][7:])
            print(f"{arm}: {results[arm]}", flush=True)
    show = lambda e: f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"
    print(f"greedy answers decoded in {initial['decode_precision']} (every arm measured alike)")
    print(f"{'arm':8} {'held out':>22} {'unseen types':>22} {'train s':>8}")
    print(f"{'initial':8} {show(initial['heldout']):>22} {show(initial['unseen']):>22}")
    for arm, r in results.items():
        print(f"{arm:8} {show(r['heldout']):>22} {show(r['unseen']):>22} {r['train_seconds']:8.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": vars(args), "initial": initial, "results": results}, indent=1
        ))  # fmt: skip


if __name__ == "__main__":
    main()
