"""The report of a `prefopt rl` run (metrics.jsonl): reward, groups without signal, answer
lengths, clipping and KL, and where a step's time goes, against steps."""

from __future__ import annotations

from pathlib import Path

from prefopt.figures import figure_html, table_html
from prefopt.train.metrics import read_metrics


def is_rl_run(folder: Path) -> bool:
    return any("frac_reward_zero_std" in line for line in read_metrics(folder / "metrics.jsonl"))


def rl_report(folder: Path) -> tuple[str, str]:
    """Title and body of an rl run's report."""
    rows = [line for line in read_metrics(folder / "metrics.jsonl") if line["split"] == "train"]
    steps = [row["step"] for row in rows]
    series = lambda key: [row.get(key, float("nan")) for row in rows]
    first, last = rows[0], rows[-1]

    def learning(figure):
        panels = (
            ("reward", "mean reward of the step's answers", "reward"),
            ("frac_reward_zero_std", "groups without signal (equal scores)", "share of groups"),
            ("completions/mean_length", "answer length", "tokens"),
        )
        for n, (key, title, unit) in enumerate(panels, 1):
            axes = figure.add_subplot(1, 3, n)
            axes.plot(steps, series(key), "o-", markersize=3)
            if key == "completions/mean_length":
                clipped = axes.twinx()
                clipped.plot(steps, series("completions/clipped_ratio"), "--", color="#c44e52")
                clipped.set_ylabel("share cut at max_new_tokens", color="#c44e52")
            axes.set_title(title)
            axes.set_xlabel("step")
            axes.set_ylabel(unit)

    def optimisation(figure):
        panels = (("clip_ratio", "share of tokens clipped"), ("kl", "KL to the reference"),
                  ("grad_norm", "gradient norm"))  # fmt: skip
        for n, (key, unit) in enumerate(panels, 1):
            axes = figure.add_subplot(1, 3, n)
            if key in first:
                axes.plot(steps, series(key), "o-", markersize=3)
            else:  # β = 0, or no step trained
                axes.text(
                    0.5, 0.5, "not measured (no KL term)", ha="center", transform=axes.transAxes
                )
            axes.set_title(unit)
            axes.set_xlabel("step")

    def phases(figure):
        axes = figure.add_subplot(1, 1, 1)
        bottom = [0.0] * len(rows)
        for phase in ("sample", "score", "train"):
            values = series(f"seconds/{phase}")
            axes.bar(steps, values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes.set_xlabel("step")
        axes.set_ylabel("seconds")
        axes.legend()

    keys = ("reward", "frac_reward_zero_std", "completions/mean_length", "draws")
    table = table_html([[key, f"{first.get(key, float('nan')):.3f}", f"{last.get(key, float('nan')):.3f}"]
                        for key in keys], ["metric", "first step", "last step"])  # fmt: skip
    evals = [line for line in read_metrics(folder / "metrics.jsonl")
             if line["split"] == "eval" and line.get("score")]  # fmt: skip

    def heldout(figure):
        panels = (("score", "held-out mean score (greedy), 95% interval"),
                  ("win_rate", "win rate against the initial answers, 95% interval"))  # fmt: skip
        for n, (key, label) in enumerate(panels, 1):
            axes = figure.add_subplot(1, 2, n)
            shown = [line for line in evals if line.get(key)]
            estimates = [line[key] for line in shown]
            axes.errorbar([line["step"] for line in shown], [e["value"] for e in estimates],
                          yerr=[[e["value"] - e["low"] for e in estimates],
                                [e["high"] - e["value"] for e in estimates]],
                          marker="o", capsize=4)  # fmt: skip
            axes.set_xlabel("step")
            axes.set_ylabel(label)

    curve = "<h2>Held out</h2>" + figure_html(heldout, width=12, height=3.2) if evals else ""
    body = (table + curve + "<h2>Learning</h2>" + figure_html(learning, width=13)
            + "<h2>Clipping, KL and gradients</h2>" + figure_html(optimisation, height=3.0)
            + "<h2>Where a step's time goes</h2>" + figure_html(phases, width=8, height=3.2))  # fmt: skip
    return f"prefopt rl: {folder.name} ({len(rows)} steps)", body
