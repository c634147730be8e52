"""The report of a train or reward run (metrics.jsonl): quality, drift and optimisation against
steps, train and eval on the same axes; a reward model's calibration."""

from __future__ import annotations

from pathlib import Path

from prefopt.data import DataError
from prefopt.figures import figure_html, table_html
from prefopt.train.metrics import headline, read_metrics


def train_report(run: Path) -> tuple[str, str]:
    lines = read_metrics(run / "metrics.jsonl")
    train = [line for line in lines if line["split"] == "train"]
    evals = [line for line in lines if line["split"] == "eval"]
    if not train:
        raise DataError(f"{run}/metrics.jsonl: no training steps to report")
    keys = [
        k
        for k in (
            "loss",
            "reward_accuracy",
            "ranking_accuracy",
            "kendall_tau",
            "reward_margin",
            "logps/chosen",
            "logps/rejected",
        )
        if headline(train[0], k) is not None
    ]
    series = lambda rows, key: (
        [r["step"] for r in rows if headline(r, key) is not None],
        [headline(r, key) for r in rows if headline(r, key) is not None],
    )

    def panel(axes, key, unit):
        for rows, style, label in ((train, "-", "train"), (evals, "o-", "eval")):
            steps, values = series(rows, key)
            if steps:
                axes.plot(steps, values, style, label=label, markersize=4)
        axes.set_title(key)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel(unit)
        if axes.lines:
            axes.legend()

    def quality(figure):
        shown = [
            k for k in keys if k in ("loss", "reward_accuracy", "ranking_accuracy", "kendall_tau")
        ]
        for n, key in enumerate(shown, 1):
            panel(
                figure.add_subplot(1, len(shown), n),
                key,
                "nats" if key == "loss" else "share of pairs" if "accuracy" in key else "τ",
            )

    def drift(figure):
        panel(figure.add_subplot(1, 2, 1), "reward_margin", "β·(ρ_w − ρ_l)")
        axes = figure.add_subplot(1, 2, 2)
        for key, style in (("logps/chosen", "-"), ("logps/rejected", "--")):
            for rows, marker, split in ((train, "", "train"), (evals, "o", "eval")):
                steps, values = series(rows, key)
                if steps:
                    axes.plot(
                        steps,
                        values,
                        style + marker,
                        label=f"{key.split('/')[1]} ({split})",
                        markersize=4,
                    )
        axes.set_title("log-probs of better and worse (likelihood drift)")
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("summed log-prob (nats)")
        axes.legend(fontsize=8)

    def optimisation(figure):
        for n, (key, unit) in enumerate(
            (
                ("lr", "learning rate"),
                ("grad_norm", "gradient norm"),
                ("tokens_per_s", "tokens / s"),
            ),
            1,
        ):
            axes = figure.add_subplot(1, 3, n)
            axes.plot([r["step"] for r in train], [r.get(key, float("nan")) for r in train])
            axes.set_title(unit)
            axes.set_xlabel("optimizer step")
            axes.set_ylabel(unit)

    summary = ""
    if len(evals) >= 2:
        start, end = evals[0], evals[-1]
        held_out = [*keys, "ndcg", "calibration_ece", "reward_std"]  # the last two: reward runs
        rows = [
            [k, f"{headline(start, k):.4f}", f"{headline(end, k):.4f}"]
            for k in held_out
            if isinstance(headline(start, k), float) and isinstance(headline(end, k), float)
        ]
        summary = "<h2>Held-out evaluation, start and end</h2>" + table_html(
            rows, ["metric", "start", "end"]
        )
    else:
        summary = "<p class=note>no evaluation lines in metrics.jsonl (no eval split): train curves only</p>"
    reward_run = bool(evals) and "calibration" in evals[-1]
    body = (
        summary
        + "<h2>Loss and accuracy</h2>"
        + figure_html(quality)
        + (_reward_body(evals) if reward_run else "")
        + (
            "<h2>Reward margin and likelihood drift</h2>" + figure_html(drift)
            if headline(train[0], "logps/chosen") is not None
            else ""
        )
        + "<h2>Optimisation</h2>"
        + figure_html(optimisation, height=3.0)
    )
    kind = "reward model run" if reward_run else "train run"
    return f"prefopt {kind}: {run.name} ({len(train)} steps)", body


def _reward_body(evals: list[dict]) -> str:
    """A reward run's held-out calibration (reliability diagram, start and end) and its rewards by rank."""

    def reliability(figure):
        axes = figure.add_subplot(1, 2, 1)
        axes.plot([0, 1], [0, 1], ":", color="#888", label="calibrated")
        for line, style in ((evals[0], "s--"), (evals[-1], "o-")):
            table = line.get("calibration")
            if table:
                points = [
                    (p, o)
                    for p, o in zip(table["predicted"], table["observed"], strict=True)
                    if p is not None
                ]
                axes.plot(
                    *zip(*points, strict=True),
                    style,
                    markersize=4,
                    label=f"step {line['step']} (ECE {table['ece']:.3f})",
                )
        axes.set_title("calibration of σ(r_w − r_l) on held-out pairs")
        axes.set_xlabel("predicted preference probability")
        axes.set_ylabel("observed preference rate")
        axes.legend(fontsize=8)
        axes = figure.add_subplot(1, 2, 2)
        for line, style in ((evals[0], "s--"), (evals[-1], "o-")):
            by_rank = line.get("reward_by_rank") or {}
            axes.plot(
                [int(r) for r in by_rank],
                list(by_rank.values()),
                style,
                label=f"step {line['step']}",
            )
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_title("mean reward by rank (1 = best)")
        axes.set_xlabel("rank in the list")
        axes.set_ylabel("reward")
        axes.legend(fontsize=8)

    return "<h2>Calibration and rewards by rank (held out)</h2>" + figure_html(reliability)
