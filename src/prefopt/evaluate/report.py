"""The reports of train runs and eval results, and what every report shares: one self-contained
HTML page (plots embedded as PNG). Plots are matplotlib without a display, with labelled axes and
units, train and eval on the same axes. `prefopt.report` picks the report for a path."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import html
import io
import json
from pathlib import Path

import numpy as np

from prefopt.data import DataError
from prefopt.files import write_atomic
from prefopt.train.metrics import headline, read_metrics

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.note{color:#666}"""


def write_page(target: Path, title: str, body: str) -> Path:
    """A self-contained HTML page (figures embedded) with the reports' style."""
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return write_atomic(target, page)


_DRAWN: contextvars.ContextVar[list | None] = contextvars.ContextVar("drawn", default=None)


@contextlib.contextmanager
def drawn_figures():
    """Every figure the reports draw meanwhile, as (name of its drawing function, matplotlib
    figure, PNG bytes): what a run sends its experiment trackers."""
    drawn: list = []
    token = _DRAWN.set(drawn)
    try:
        yield drawn
    finally:
        _DRAWN.reset(token)
        if drawn:  # pyplot keeps every figure until it is closed
            from matplotlib import pyplot

            for _, figure, _ in drawn:
                pyplot.close(figure)


def figure_html(draw, *, width: float = 10, height: float = 3.6, png: Path | None = None) -> str:
    """An <img> of what `draw(figure)` plots, as an embedded PNG (also written to `png`, if given)."""
    import matplotlib  # here: pyplot may be imported only after the display-less backend is chosen

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure = pyplot.figure(figsize=(width, height), dpi=110)
    draw(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    if (drawn := _DRAWN.get()) is not None:  # kept open for the trackers until they are done
        drawn.append((getattr(draw, "__name__", "figure").strip("<>"), figure, buffer.getvalue()))
    else:
        pyplot.close(figure)
    if png is not None:
        png.write_bytes(buffer.getvalue())
    return (
        f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    )


def table_html(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


# ----- train runs -----


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
