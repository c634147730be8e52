"""Which optimizer, at its tuned learning rate? For each of prefopt's optimizers (AdamW, AdEMAMix,
Muon, schedule-free AdamW), a small `prefopt tune` study over the learning rate alone (TPE, seeded)
trains LoRA on the example ranked lists (examples/data/lists.jsonl, Plackett–Luce) for a fixed
number of steps and scores each trial by the held-out ranking accuracy of the policy's
likelihood; the table gives each optimizer's best trial, its learning rate, and its seconds per
step against AdamW's (the median over the best trial's steps). One process runs the studies one
after another (same data, same model, same held-out lists). With `--demo`, each optimizer then
runs the demo's loop (`prefopt demo`, 3 rounds, 1,152 sampled answers) at the learning rate its
study found, and the held-out constraint satisfaction of its final policy is reported (tuning on
the demo itself would take a demo per trial).

    python benchmarks/optimizers.py --demo --json benchmarks/results-optimizers.json
    python benchmarks/optimizers.py --demo --tuned benchmarks/results-optimizers.json --json out.json
    python benchmarks/optimizers.py --trials 2 --steps 4      # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rich.console import Console

from prefopt.train.optimizers import OPTIMIZERS
from prefopt.tune import TuneConfig, tune

ROOT = Path(__file__).resolve().parent.parent
# each optimizer's learning-rate range: Muon's orthogonal steps and schedule-free averaging take
# larger rates than Adam's
RANGES = {"adamw": (1e-5, 3e-3), "ademamix": (1e-5, 3e-3), "muon": (1e-4, 3e-2),
          "schedule_free_adamw": (1e-5, 1e-2)}  # fmt: skip


def study(args, optimizer: str, folder: Path) -> dict:
    low, high = RANGES[optimizer]
    base = {
        "model": args.model, "data": args.data, "eval_fraction": 0.2, "lora": True,
        "loss": "plackett_luce", "optimizer": optimizer, "max_steps": args.steps,
        "batch_size": 8, "scheduler": "cosine", "warmup_ratio": 0.1,
        "max_prompt_tokens": 128, "max_completion_tokens": 64, "eval_every": None,
    }  # fmt: skip
    config = TuneConfig(base=base, space={"learning_rate": {"low": low, "high": high, "log": True}},
                        objectives={"ranking_accuracy": "maximize"}, n_trials=args.trials,
                        sampler="tpe", seed=0, output_dir=str(folder / optimizer),
                        study_name=optimizer, pruner="none")  # fmt: skip
    result = tune(config, console=Console(quiet=True))
    done = [t for t in result.trials if t["state"] == "COMPLETE"]
    best = max(done, key=lambda t: t["values"][0])
    lines = [json.loads(line) for line in (Path(best["run"]) / "metrics.jsonl").open()]
    steps = [line for line in lines if line["split"] == "train"]
    start = next(line for line in lines if line["split"] == "eval" and line["step"] == 0)
    seconds = statistics.median(8 / line["lists_per_s"] for line in steps[1:] or steps)
    return {"ranking_accuracy": best["values"][0], "learning_rate": best["params"]["learning_rate"],
            "initial_ranking_accuracy": start["ranking_accuracy"], "seconds_per_step": seconds,
            "trials": [(t["params"]["learning_rate"], t["values"][0]) for t in done]}  # fmt: skip


def on_demo(args, optimizer: str, learning_rate: float, folder: Path) -> dict:
    """The demo's loop with this optimizer at this learning rate: held-out satisfaction."""
    from prefopt.demo.run import LOOP_SETTINGS, demo

    train = {**LOOP_SETTINGS["train"], "optimizer": optimizer, "learning_rate": learning_rate}
    result = demo(folder / f"demo-{optimizer}", model=args.model, method="loop",
                  console=Console(quiet=True), loop_settings={"train": train})  # fmt: skip
    arm = result.arms[0]
    (_, before), (_, after) = arm.curve[0], arm.curve[-1]
    return {"before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "lists.jsonl"))
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--trials", type=int, default=5, help="trials per optimizer's study")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per trial")
    parser.add_argument("--demo", action="store_true", help="also the demo's loop per optimizer")
    parser.add_argument("--tuned", help="a results JSON of this script: its studies, not new ones")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        tuned = json.loads(Path(args.tuned).read_text())["results"] if args.tuned else {}
        for optimizer in args.optimizers.split(","):
            results[optimizer] = tuned.get(optimizer) or study(args, optimizer, Path(folder))
            print(f"{optimizer}: {results[optimizer]}", flush=True)
        for optimizer in results if args.demo else ():
            best = results[optimizer]["learning_rate"]
            results[optimizer]["demo"] = on_demo(args, optimizer, best, Path(folder))
            print(f"{optimizer} on the demo: {results[optimizer]['demo']}", flush=True)
    adamw = results.get("adamw", {}).get("seconds_per_step")
    print(
        f"{'optimizer':22} {'held-out acc.':>13} {'from':>6} {'best lr':>9} {'s/step':>7} {'vs AdamW':>8}"
    )
    for name, r in results.items():
        ratio = f"{r['seconds_per_step'] / adamw:.2f}x" if adamw else "-"
        demo = r.get("demo", {}).get("after")
        shown = (
            f"  demo held out {demo['value']:.3f} [{demo['low']:.3f}, {demo['high']:.3f}]"
            if demo
            else ""
        )
        print(f"{name:22} {r['ranking_accuracy']:13.3f} {r['initial_ranking_accuracy']:6.3f} "
              f"{r['learning_rate']:9.2e} {r['seconds_per_step']:7.2f} {ratio:>8}{shown}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
