"""The demo's report: constraint satisfaction before and after (held out, and on types never
trained on), per constraint type, against the labels used per round, the stages' times, and
held-out answers before and after side by side. HTML with the figures embedded, and the summary
figure as a PNG beside it."""

from __future__ import annotations

import html
from pathlib import Path

from prefopt.demo.task import satisfaction
from prefopt.figures import figure_html, table_html, write_page
from prefopt.oracles.constraints import check_constraints

EXAMPLES = 8  # held-out prompts shown before and after: the first ones of the file, not chosen


def _interval(estimate: dict) -> str:
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def demo_report(out: Path, arms: list, unseen: dict, seconds: dict) -> Path:
    """`arms`: the loops (or the rl run) of the demo, each with its label, curve, labels,
    held-out rows and stage rows (demo/run.py)."""
    before_rows, after_rows = arms[0].heldout_rows()
    heldout = {"before": satisfaction(before_rows), "after": satisfaction(after_rows)}
    body = _summary_table(arms, unseen)
    body += "<h2>Before and after</h2>" + figure_html(
        lambda f: _before_after(f, heldout, unseen), height=4.0, png=out / "report.png"
    )
    body += "<h2>Against the answers sampled</h2>" + figure_html(
        lambda f: _curves(f, arms), height=3.6
    )
    body += "<h2>Stages</h2>" + _stage_table(arms, seconds)
    body += f"<h2>Held-out answers, before and after (the first {EXAMPLES} prompts)</h2>"
    body += _examples(before_rows[:EXAMPLES], after_rows[:EXAMPLES])
    return write_page(
        out / "report.html", "prefopt demo: instruction following, before and after", body
    )


def _summary_table(arms: list, unseen: dict) -> str:
    rows = []
    for arm in arms:
        (_, before), (answers, after) = arm.curve[0], arm.curve[-1]
        gain = 100 * (after["value"] - before["value"])
        rows.append([f"held-out prompts ({arm.label})", _interval(before), _interval(after),
                     f"{gain:+.1f}", str(answers), str(arm.labels)])  # fmt: skip
    rows.append(
        [
            "unseen constraint types",
            _interval(unseen["before"]["score"]),
            _interval(unseen["after"]["score"]),
            f"{100 * (unseen['after']['score']['value'] - unseen['before']['score']['value']):+.1f}",
            "",
            "",
        ]
    )
    return (
        "<p>Constraint satisfaction: the fraction of a prompt's constraints met, averaged over prompts, with "
        "95% bootstrap intervals over prompts; greedy answers.</p>"
        + table_html(
            rows, ["prompts", "before", "after", "points", "sampled answers", "labelled lists"]
        )
    )


def _before_after(figure, heldout: dict, unseen: dict) -> None:
    for n, (title, result) in enumerate(
        (
            ("held-out prompts, trained constraint types", heldout),
            ("constraint types never trained on", unseen),
        ),
        1,
    ):
        axes = figure.add_subplot(1, 2, n)
        kinds = list(result["before"]["by_type"])
        width = 0.4
        for shift, which, color in (
            (-width / 2, "before", "#9aa5b1"),
            (width / 2, "after", "#2f6fde"),
        ):
            score = result[which]["score"]
            label = f"{which}: {score['value']:.2f} [{score['low']:.2f}, {score['high']:.2f}]"
            axes.bar(
                [i + shift for i in range(len(kinds))],
                [result[which]["by_type"].get(k, 0) for k in kinds],
                width,
                color=color,
                label=label,
            )
        axes.set_xticks(range(len(kinds)), kinds, rotation=35, ha="right", fontsize=8)
        axes.set_ylim(0, 1.05)
        axes.set_ylabel("share of constraints met")
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8, loc="upper left")


def _curves(figure, arms: list) -> None:
    axes = figure.add_subplot(1, 1, 1)
    for arm in arms:
        answers, scores = zip(*arm.curve, strict=True)
        axes.errorbar(
            answers,
            [s["value"] for s in scores],
            yerr=[
                [s["value"] - s["low"] for s in scores],
                [s["high"] - s["value"] for s in scores],
            ],
            marker="o",
            capsize=3,
            label=arm.label,
        )
    axes.set_xlabel("answers sampled from the policy")
    axes.set_ylabel("held-out constraint satisfaction")
    axes.legend(fontsize=8)


def _stage_table(arms: list, seconds: dict) -> str:
    stages = ["generate", "acquire", "label", "train", "evaluate"]
    rows = [[name, *(f"{times.get(stage, 0):.0f}" for stage in stages)] for arm in arms for
            name, times in arm.stage_rows()]  # fmt: skip
    timing = "; ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
    note = f"wall clock of this run (a resumed run counts only what it ran): {timing}"
    return (
        table_html(rows, ["round", *(f"{stage} s" for stage in stages)])
        + f"<p class=note>{html.escape(note)}</p>"
    )


def _examples(before: list[dict], after: list[dict]) -> str:
    def cell(row: dict) -> str:
        checks = check_constraints(row["prompt"], row["completions"][0], row)
        marks = " ".join(f"{'✓' if met else '✗'} {name}" for name, met in checks.items())
        return (
            f"<div class=note>{html.escape(marks)}</div>"
            f"<pre style='white-space:pre-wrap;margin:0'>{html.escape(row['completions'][0])}</pre>"
        )

    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(_prompt_text(b['prompt']))}</td>"
        f"<td style='text-align:left'>{cell(b)}</td><td style='text-align:left'>{cell(a)}</td></tr>"
        for b, a in zip(before, after, strict=True)
    )
    return f"<table><tr><th>prompt</th><th>before</th><th>after</th></tr>{rows}</table>"


def _prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]
