"""The report of an eval result (`prefopt eval`): per-prompt scores with their intervals, or a
data set's ranking accuracy, as one page. `prefopt.report` picks the report for a path."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from prefopt.data import DataError
from prefopt.figures import figure_html, table_html

# ----- eval results -----


def eval_report(path: Path) -> tuple[str, str]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: not a prefopt eval result (not JSON)") from None
    if not isinstance(result, dict) or result.get("mode") not in ("prompts", "data"):
        raise DataError(f"{path}: not a prefopt eval result (no mode)")
    return (
        f"prefopt eval: {result['model']}",
        _prompts_body(result) if result["mode"] == "prompts" else _data_body(result),
    )


def _bar_with_interval(axes, labels: list[str], estimates: list[dict], unit: str) -> None:
    values = [e["value"] for e in estimates]
    errors = [
        [e["value"] - e["low"] for e in estimates],
        [e["high"] - e["value"] for e in estimates],
    ]
    axes.bar(
        labels,
        values,
        yerr=errors,
        capsize=8,
        color=["#4c72b0", "#999999", "#55a868"][: len(values)],
    )
    axes.set_ylabel(unit)


def _prompts_body(result: dict) -> str:
    per_prompt = result.get("per_prompt", {})
    estimates = {key: v for key, v in result.items() if isinstance(v, dict) and "value" in v}
    if "win_rate" in result:
        estimates["win_rate"] = result["win_rate"]["rate"]
    rows = [
        [key, f"{v['value']:.3f}", f"[{v['low']:.3f}, {v['high']:.3f}]"]
        for key, v in estimates.items()
    ]
    if result.get("win_rate", {}).get("length_controlled") is not None:
        rows.append(
            ["length-controlled win rate", f"{result['win_rate']['length_controlled']:.3f}", ""]
        )
    body = table_html(rows, ["statistic", "value", "95% interval"])

    def bars(figure):
        n = 1 + ("win_rate" in result)
        if "score" in result:
            axes = figure.add_subplot(1, n, 1)
            shown = [("model", result["score"])] + (
                [("baseline", result["baseline_score"])] if "baseline_score" in result else []
            )
            _bar_with_interval(
                axes, [s for s, _ in shown], [e for _, e in shown], "mean oracle score"
            )
            axes.set_title("score with 95% bootstrap interval (over prompts)")
        if "win_rate" in result:
            axes = figure.add_subplot(1, n, n)
            rate = result["win_rate"]
            _bar_with_interval(
                axes, ["win rate"], [rate["rate"]], "share of prompts won (ties half)"
            )
            if rate.get("length_controlled") is not None:
                axes.bar(["length-controlled"], [rate["length_controlled"]], color="#dd8452")
            axes.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
            axes.set_ylim(0, 1)
            axes.set_title(f"against the baseline ({rate['failures']} judge failures left out)")

    def distributions(figure):
        axes = figure.add_subplot(1, 2, 1)
        for key, label in (("scores", "model"), ("baseline_scores", "baseline")):
            values = [v for v in per_prompt.get(key, []) if v is not None]
            if values:
                axes.hist(values, bins=20, alpha=0.6, label=label)
        axes.set_title("oracle score per prompt")
        axes.set_xlabel("mean score of a prompt's answers")
        axes.set_ylabel("prompts")
        axes.legend()
        axes = figure.add_subplot(1, 2, 2)
        for key, label in (("lengths", "model"), ("baseline_lengths", "baseline")):
            if per_prompt.get(key):
                axes.hist(per_prompt[key], bins=20, alpha=0.6, label=label)
        axes.set_title("answer length")
        axes.set_xlabel("tokens (mean over a prompt's answers)")
        axes.set_ylabel("prompts")
        axes.legend()

    if "score" in result or "win_rate" in result:
        body += "<h2>Scores and win rate</h2>" + figure_html(bars)
    if per_prompt.get("lengths"):
        body += "<h2>Distributions</h2>" + figure_html(distributions)
    return body


def _data_body(result: dict) -> str:
    rows = [
        [
            key,
            f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
            if isinstance(v, dict)
            else f"{v:.3f}",
        ]
        for key, v in result.items()
        if isinstance(v, dict | float) and key != "difficulty"
    ]
    body = table_html(rows, ["statistic", "value"])
    points = result.get("difficulty")
    if not points:
        return body + f"<p class=note>{html.escape(result.get('note', ''))}</p>"

    def scatter(figure):
        axes = figure.add_subplot(1, 1, 1)
        for correct, color, label in (
            (True, "#55a868", "ranked correctly"),
            (False, "#c44e52", "misranked"),
        ):
            chosen = [p for p in points if p["ranked_correctly"] == correct]
            axes.scatter(
                [p["c"] for p in chosen],
                [p["dpo_loss"] for p in chosen],
                s=12,
                color=color,
                label=label,
            )
        c = np.linspace(min(p["c"] for p in points), max(p["c"] for p in points), 200)
        axes.plot(
            c,
            np.logaddexp(0, -result["beta"] * c),
            color="black",
            label="loss threshold −log σ(βc)",
        )
        axes.set_xlabel(
            "difficulty c = log π_ref(y_l) − log π_ref(y_w)  (nats; > 0: the reference misranks)"
        )
        axes.set_ylabel("DPO loss (nats)")
        axes.set_title("difficulty against ranking correctness")
        axes.legend()

    return body + "<h2>Difficulty</h2>" + figure_html(scatter, height=4.5)
