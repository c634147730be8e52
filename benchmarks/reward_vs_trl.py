"""prefopt reward train against TRL's RewardTrainer on the same model, data and hyperparameters.

Both start from one reward model (the base LM with a scalar head initialised once, seeded, and
saved), so their step-1 losses on pairs must agree. Each measurement runs in a process of its own,
prefopt and TRL alternating; peak memory is per run (peak RSS on a CPU, peak GPU memory
allocated by torch on a GPU). Workloads (synthetic text of controlled token lengths, seeded, with
a learnable preference: an answer's score is how many words of a "good" set it holds):
  pairs   ≈170-token prompt, two ≈170-token answers; Bradley–Terry on both sides
  lists   ranked lists of K = 4: prefopt with Plackett–Luce on each list (one packed row),
          TRL with Bradley–Terry on all 6 pairs of each list (as its maintainers advise)
Epoch time is the optimizer steps (not model loading or tokenization) on both sides. Held-out
accuracy: both trained models score the same held-out pairs through one function (prefopt's
reward_model oracle, equal to a plain transformers forward). TRL: `pip install -e '.[bench]'`.

    python benchmarks/reward_vs_trl.py --quick                    # a minute or two
    python benchmarks/reward_vs_trl.py --json results.json        # the full table
    python benchmarks/reward_vs_trl.py --lora --precision bf16    # LoRA both sides, bf16
    python benchmarks/reward_vs_trl.py --lora --workloads pairs --profile-step 4  # where a step's time goes
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
# the policy benchmark's helpers
from vs_trl import (
    WORDS,
    StepProfile,
    peak_memory_gb,
    prefopt_step_profile,
    prefopt_step_seconds,
    print_step_profiles,
    run_worker,
    side_by_side,
    steady,
    trl_step_profile,
    trl_step_timer,
)

# lists, prompt tokens, answer tokens, K
WORKLOADS = {"pairs": (64, 170, 170, 2), "lists": (24, 170, 170, 4)}
QUICK = {"pairs": (8, 48, 48, 2), "lists": (4, 48, 48, 4)}
HELD_OUT = 48  # held-out pairs (lists are split into their pairs for accuracy)
GOOD = ("bright", "clear", "kind", "honest", "helpful", "careful", "precise", "gentle")


def synthetic_lists(
    tokenizer, count: int, prompt_tokens: int, answer_tokens: int, k: int, seed: int
) -> list:
    """Lists whose answers hold 0, 3, 6, … good words among random ones (shuffled order, scored by
    that count): a preference a reward model can learn from the text alone."""
    rng = random.Random(seed)

    def text(tokens: int, good: int = 0) -> str:
        words = [rng.choice(WORDS) for _ in range(tokens)]
        for place in rng.sample(range(len(words)), good):
            words[place] = rng.choice(GOOD)
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) > tokens:
            words.pop(rng.randrange(len(words)))
        return " ".join(words)

    rows = []
    for _ in range(count):
        goods = rng.sample(range(0, 3 * k + 3, 3), k)
        rows.append(
            {
                "prompt": text(prompt_tokens) + "\n",
                "completions": [" " + text(answer_tokens, g) for g in goods],
                "scores": [float(g) for g in goods],
            }
        )
    return rows


def as_pairs(rows: list) -> list:
    return [
        {
            "prompt": row["prompt"],
            "chosen": row["completions"][i],
            "rejected": row["completions"][j],
        }
        for row in rows
        for i in range(len(row["completions"]))
        for j in range(len(row["completions"]))
        if row["scores"][i] > row["scores"][j]
    ]


def held_out_accuracy(model_folder: str, pairs: list) -> float:
    from prefopt.oracles import ListToJudge, make_oracle

    oracle = make_oracle(
        "reward_model", {"model": model_folder, "precision": "fp32", "chat_template": "never"}
    )
    judged = oracle.judge([ListToJudge(p["prompt"], (p["chosen"], p["rejected"])) for p in pairs])
    return sum(j.scores[0] > j.scores[1] for j in judged) / len(pairs)


def prefopt_config(args, rows, model_path: str, folder: Path):
    from prefopt.reward import RewardConfig

    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return RewardConfig(
        model=model_path,
        data=str(data),
        output_dir=str(folder / "run"),
        objective="plackett_luce" if len(rows[0]["completions"]) > 2 else "bradley_terry",
        lora=args.lora,
        precision=args.precision,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        eval_fraction=0.0,
        warmup_ratio=0.0,
        scheduler="constant",
        max_prompt_tokens=args.max_length,
        max_completion_tokens=args.max_length,
        chat_template="never",
        max_grad_norm=None,
        gradient_checkpointing=args.checkpointing,
        compile=args.compile,
    )


def prefopt_order(args, rows, model_path: str, folder: Path) -> list[int]:
    """The lists in the order prefopt's steps take them (its seeded, length-bucketed plan): TRL
    reads pairs in this order, so both tools' first steps see the same pairs."""
    from prefopt.data import TokenizeSettings, tokenize_records
    from prefopt.data.load import load_records
    from prefopt.engine.model import load_tokenizer

    config = prefopt_config(args, rows, model_path, folder)
    records = load_records(config.data).records
    settings = TokenizeSettings(
        config.max_prompt_tokens, config.max_completion_tokens, chat_template="never"
    )
    examples, _ = tokenize_records(records, load_tokenizer(model_path), settings)
    return [i for lists in config.batching().epoch_steps(examples, 0, 1) for i in lists]


def run_prefopt(args, rows, model_path: str, folder: Path) -> dict:
    from prefopt.reward import reward_train

    profile = StepProfile(args.profile_step, lists=args.batch_size)
    try:
        result = reward_train(
            prefopt_config(args, rows, model_path, folder), on_step=prefopt_step_profile(profile)
        )
    finally:
        profile.close()
    memory = peak_memory_gb()
    first = json.loads((folder / "run" / "metrics.jsonl").read_text().splitlines()[0])
    steps = prefopt_step_seconds(folder / "run" / "metrics.jsonl", args.batch_size)
    return {
        "seconds": result.loop_seconds,
        "step1_loss": first["loss"],
        "steps": result.steps,
        "peak_memory_gb": memory,
        "model_folder": str(folder / "run" / "model"),
        "steady_step_seconds": steady(steps),
        "profile": profile.result(),
    }


def run_trl(args, rows, model_path: str, folder: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from prefopt.engine.hostmem import keep_freed_memory

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, dtype=torch.float32
    )
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="SEQ_CLS",
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
    config = RewardConfig(
        output_dir=str(folder / "trl"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=4 * args.max_length,
        num_train_epochs=args.epochs,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        gradient_checkpointing=args.checkpointing,
        dataloader_num_workers=0,
        seed=0,
        torch_compile=args.compile,
    )
    pairs_only = len(rows[0]["completions"]) == 2
    if (
        pairs_only
    ):  # TRL takes the pairs in prefopt's order, one after another (no shuffle of its own)
        rows = [rows[i] for i in prefopt_order(args, rows, model_path, folder)]

    class InOrder(RewardTrainer):
        def _get_train_sampler(self, train_dataset=None):
            if not pairs_only:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return torch.utils.data.SequentialSampler(dataset)

    step_seconds = []
    k = len(rows[0]["completions"])
    # a step is pairs
    profile = StepProfile(args.profile_step, lists=args.batch_size / (k * (k - 1) // 2))
    # prefopt keeps freed memory in the process while it trains on a CPU; TRL gets the same
    with keep_freed_memory(enabled=not torch.cuda.is_available()):
        trainer = InOrder(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_list(as_pairs(rows)),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[trl_step_timer(step_seconds), trl_step_profile(profile)],
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    memory = peak_memory_gb()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained = trainer.model.merge_and_unload() if args.lora else trainer.model
    trained.save_pretrained(folder / "trl-model")
    tokenizer.save_pretrained(folder / "trl-model")
    return {
        "seconds": seconds,
        "step1_loss": losses[0],
        "steps": trainer.state.global_step,
        "peak_memory_gb": memory,
        "model_folder": str(folder / "trl-model"),
        "steady_step_seconds": steady(step_seconds),
        "profile": profile.result(),
    }


def initial_reward_model(model: str, folder: Path) -> str:
    """The base LM with a scalar head, initialised once (seeded) and saved: both tools start here.
    Its pad token is not the EOS that ends every answer (transformers reads a reward at the last
    non-pad token)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prefopt.reward.run import distinct_pad

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        model, num_labels=1, dtype=torch.float32
    )
    distinct_pad(tokenizer, reward_model)
    reward_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def worker(args) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    count, *lengths = (QUICK if args.quick else WORKLOADS)[args.workload]
    rows = synthetic_lists(tokenizer, count, *lengths, seed=0)
    held_out = as_pairs(synthetic_lists(tokenizer, HELD_OUT, *lengths[:2], 2, seed=1))
    tokens = sum(len(tokenizer(r["prompt"] + "".join(r["completions"]))["input_ids"]) for r in rows)
    with tempfile.TemporaryDirectory() as folder:
        result = (run_prefopt if args.worker == "prefopt" else run_trl)(
            args, rows, args.model, Path(folder)
        )
        result["held_out_accuracy"] = held_out_accuracy(result.pop("model_folder"), held_out)
    result |= {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "lists": len(rows),
        "lists_per_s": len(rows) / result["seconds"],
        "tokens_per_s": tokens / result["seconds"],
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
        "--max-length",
        str(args.max_length),
        "--precision",
        args.precision,
        "--epochs",
        str(args.epochs),
    ]
    command += (
        ["--quick"] * args.quick + ["--lora"] * args.lora + ["--checkpointing"] * args.checkpointing
    )
    command += ["--compile"] * args.compile
    command += ["--profile-step", str(args.profile_step)] * bool(args.profile_step)
    return run_worker(
        command,
        args.cache,
        f"{framework} on {workload}",
        huge_pages=framework == "prefopt" or args.trl_huge_pages,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small data: a minute or two")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--model", default="default")
    parser.add_argument("--workloads", default="pairs,lists")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="epochs on both sides (held-out accuracy needs several)",
    )
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--lora", action="store_true", help="LoRA on both sides (adapters and the head trained)"
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
        "--repeats", type=int, default=1, help="runs per tool and workload (the fastest is kept)"
    )
    parser.add_argument(
        "--trl-huge-pages",
        action="store_true",
        help="TRL with PyTorch's huge-page allocation "
        "too (THP_MEM_ALLOC_ENABLE=1, which importing prefopt sets); by default TRL runs without it",
    )
    parser.add_argument(
        "--profile-step",
        type=int,
        help="profile this optimizer step (2 or later) on both sides "
        "and print where its time went: GEMMs, attention, the rest",
    )
    parser.add_argument("--worker", choices=["prefopt", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_step is not None and args.profile_step < 2:
        parser.error(
            "--profile-step: 2 or later (the first step pays for first page faults and caches)"
        )
    if args.worker:
        return worker(args)

    from rich.console import Console
    from rich.table import Table

    from prefopt.engine.model import resolve_model_path

    try:
        base = str(resolve_model_path(args.model))
    except (OSError, ValueError) as error:
        raise SystemExit(f"--model {args.model}: {error}") from None
    args.cache = tempfile.mkdtemp(prefix="prefopt-bench-cache-")
    args.model = initial_reward_model(base, Path(tempfile.mkdtemp(prefix="prefopt-bench-rm-")))
    results = {
        workload: side_by_side(
            lambda tool, workload=workload: measure(args, tool, workload), args.repeats
        )
        for workload in args.workloads.split(",")
    }
    table = Table(
        title=f"prefopt reward train vs TRL RewardTrainer ({'LoRA' if args.lora else 'full fine-tuning'}, "
        f"{args.precision}, batch {args.batch_size}, {args.epochs} epoch{'s' * (args.epochs > 1)}"
        f"{', checkpointing' * args.checkpointing}{', compiled' * args.compile}"
        f"{', quick' if args.quick else ''}"
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
        "held-out acc",
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
                f"{r['held_out_accuracy']:.3f}",
                *ratios,
            )
    console = Console(width=160)
    console.print(table)
    print_step_profiles(console, results)
    pairs = results.get("pairs")
    if pairs and pairs["step1_loss_difference"] > 1e-3:
        console.print(
            f"[yellow]pairs: step-1 losses differ by {pairs['step1_loss_difference']:.5f} (> 1e-3): both "
            "start from the same reward model, so their first rewards should agree[/]"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
