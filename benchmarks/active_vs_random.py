"""Does choosing what to label help? `prefopt loop` on the demo's task (instruction following with
constraints the `constraints` verifier checks) with the same label budget per round, random
acquisition against entropy, certainty and hybrid, several seeds each; prints the held-out
constraint satisfaction against labels used (mean and a 95% t-interval over seeds per strategy),
whether some acquisition reaches random's final score with at most 60% of its labels, and draws
the curves.

    python benchmarks/active_vs_random.py --json benchmarks/results-active-vs-random.json \
        --plot docs/screenshots/active-vs-random.png

Every run is a loop folder under --out and resumes: run the same command again after an
interruption and finished runs are read, not repeated.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

STRATEGIES = ("random", "entropy", "certainty", "hybrid")
# two-sided 95% Student t quantiles by degrees of freedom (1.96 past the table)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
TARGET = 0.6  # the bar: random's final score with at most 60% of its labels


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="default", help="the initial policy (default: the embedded SmolLM2)"
    )
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", type=int, default=3, help="loop seeds per strategy")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--labels", type=int, default=32, help="labelled lists per round (the budget)"
    )
    parser.add_argument(
        "--heldout", type=int, default=40, help="held-out prompts of the trained constraint types"
    )
    parser.add_argument("--train-prompts", type=int, default=300, help="the prompt pool")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--out", default="runs/active-vs-random", help="where every loop's folder goes"
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="draw the curves into this PNG")
    args = parser.parse_args(argv)
    for name in ("seeds", "rounds", "labels", "heldout", "train_prompts", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: needs at least 1")
    if "random" not in args.strategies:
        parser.error(
            "--strategies: random is the baseline every other strategy is measured against"
        )
    return args


def run_all(args: argparse.Namespace) -> dict:
    from prefopt.demo.run import LOOP_SETTINGS
    from prefopt.demo.task import write_task
    from prefopt.loop import LoopConfig, loop

    out = Path(args.out)
    task = write_task(out / "task", train=args.train_prompts, heldout=args.heldout, unseen=1)
    runs: dict[str, list[dict]] = {}
    for seed in range(
        args.seeds
    ):  # seed by seed, so a cut-short benchmark still compares all strategies
        for strategy in args.strategies:
            settings = {
                **LOOP_SETTINGS,
                "model": args.model,
                "prompts": str(task["train"]),
                "heldout": str(task["heldout"]),
                "rounds": args.rounds,
                "labels_per_round": args.labels,
                "max_new_tokens": args.max_new_tokens,
                "acquisition": strategy,
                "seed": seed,
                "output_dir": str(out / f"{strategy}-seed{seed}"),
            }
            folder = Path(settings["output_dir"])
            started = time.perf_counter()
            records = loop(LoopConfig(**settings), resume=folder.exists())
            print(f"{strategy} seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
            runs.setdefault(strategy, []).append(
                {
                    "seed": seed,
                    "labels": [0] + [r["labels_total"] for r in records],
                    "scores": [records[0]["eval"]["baseline_score"]["value"]]
                    + [r["eval"]["score"]["value"] for r in records],
                    "seconds": [sum(r["seconds"].values()) for r in records],
                    "overhead_share": [r["overhead_share"] for r in records],
                }
            )
    return {
        "settings": {
            key: value for key, value in vars(args).items() if key not in ("json", "plot")
        },
        "loop": {**LOOP_SETTINGS, "rounds": args.rounds, "labels_per_round": args.labels},
        "runs": runs,
        "summary": summarize(runs),
    }


def interval(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": mean, "high": mean}
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def summarize(runs: dict[str, list[dict]]) -> dict:
    curves = {
        strategy: {
            "labels": [
                statistics.fmean(r["labels"][i] for r in rs) for i in range(len(rs[0]["labels"]))
            ],
            "score": [interval([r["scores"][i] for r in rs]) for i in range(len(rs[0]["scores"]))],
        }
        for strategy, rs in runs.items()
    }
    final = curves["random"]["score"][-1]["mean"]
    final_labels = curves["random"]["labels"][-1]
    reached = {}
    for strategy, curve in curves.items():
        labels = next(
            (n for n, s in zip(curve["labels"], curve["score"], strict=True) if s["mean"] >= final),
            None,
        )
        reached[strategy] = {
            "labels": labels,
            "share_of_random": None if labels is None else labels / final_labels,
        }
    best = [
        s
        for s in curves
        if s != "random"
        and reached[s]["share_of_random"] is not None
        and reached[s]["share_of_random"] <= TARGET
    ]
    return {
        "curves": curves,
        "random_final": final,
        "reached_random_final": reached,
        "target_met_by": best,
    }


def print_table(result: dict) -> None:
    curves = result["summary"]["curves"]
    rounds = len(next(iter(curves.values()))["labels"])
    print(
        f"{'strategy':<10}"
        + "".join(f"  {'round ' + str(i) if i else 'start':>29}" for i in range(rounds))
    )
    for strategy, curve in curves.items():
        cells = [
            f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}] at {n:.0f}"
            for n, s in zip(curve["labels"], curve["score"], strict=True)
        ]
        print(f"{strategy:<10}" + "".join(f"  {cell:>29}" for cell in cells))
    summary = result["summary"]
    print(f"random's final held-out score: {summary['random_final']:.3f}")
    for strategy, reached in summary["reached_random_final"].items():
        if strategy == "random":
            continue
        said = (
            "does not reach it"
            if reached["labels"] is None
            else f"reaches it with {reached['labels']:.0f} labels ({100 * reached['share_of_random']:.0f}% of "
            "random's)"
        )
        print(f"  {strategy}: {said}")
    met = summary["target_met_by"]
    print(
        f"target (≤ {100 * TARGET:.0f}% of random's labels): {'met by ' + ', '.join(met) if met else 'not met'}"
    )


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for strategy, curve in result["summary"]["curves"].items():
        means = [s["mean"] for s in curve["score"]]
        line = axes.plot(curve["labels"], means, marker="o", label=strategy)[0]
        axes.fill_between(
            curve["labels"],
            [s["low"] for s in curve["score"]],
            [s["high"] for s in curve["score"]],
            color=line.get_color(),
            alpha=0.12,
        )
    seeds = result["settings"]["seeds"]
    axes.set(
        xlabel="labelled lists used",
        ylabel="held-out constraint satisfaction",
        title=f"acquisition against random ({seeds} seeds, 95% t-intervals)",
    )
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        result = run_all(args)
    except (
        ValueError,
        FileNotFoundError,
    ) as error:  # the library's messages name the setting or file
        print(f"active_vs_random: {error}", file=sys.stderr)
        return 2
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
