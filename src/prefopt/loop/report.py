"""The report of a loop (rounds.jsonl): held-out quality against labels used, overlaid with other
loops, and where a round's time goes."""

from __future__ import annotations

from pathlib import Path

from prefopt.data import DataError, read_jsonl
from prefopt.figures import figure_html, table_html
from prefopt.loop.round import RoundRecord


def loop_report(loops: list[Path]) -> tuple[str, str]:
    """Title and body of the report of one loop, or several overlaid (the first's stages shown)."""
    runs: dict[str, list[RoundRecord]] = {}
    for folder in loops:
        if not (folder / "rounds.jsonl").exists():
            raise DataError(f"{folder}: not a loop (no rounds.jsonl)")
        runs[folder.name] = read_jsonl(folder / "rounds.jsonl")

    def curves(figure):
        for n, (key, unit) in enumerate(
            (
                ("score", "held-out mean oracle score"),
                ("win_rate", "win rate against the initial model"),
            ),
            1,
        ):
            axes = figure.add_subplot(1, 2, n)
            for name, rounds in runs.items():
                points = [
                    (
                        r["labels_total"],
                        r["eval"][key]["rate"] if key == "win_rate" else r["eval"][key],
                    )
                    for r in rounds
                    if key in r.get("eval", {})
                ]
                if points:
                    labels = [p for p, _ in points]
                    values = [e["value"] for _, e in points]
                    errors = [
                        [e["value"] - e["low"] for _, e in points],
                        [e["high"] - e["value"] for _, e in points],
                    ]
                    axes.errorbar(labels, values, yerr=errors, marker="o", capsize=4, label=name)
            axes.set_xlabel("labels used")
            axes.set_ylabel(unit)
            axes.set_title(f"{unit}, 95% interval")
            axes.legend()

    def stages(figure):
        axes = figure.add_subplot(1, 1, 1)
        rounds = next(iter(runs.values()))
        names = list(rounds[0]["seconds"])
        bottom = [0.0] * len(rounds)
        for stage in names:
            values = [r["seconds"].get(stage, 0.0) for r in rounds]
            axes.bar(
                [f"round {r['round'] + 1}" for r in rounds], values, bottom=bottom, label=stage
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes.set_ylabel("seconds")
        axes.set_title(f"time per stage ({next(iter(runs))})")
        axes.legend()

    rows = [
        [
            name,
            str(r["round"] + 1),
            str(r["labels"]),
            str(r["labels_total"]),
            str(r.get("eval", {}).get("score", {}).get("value", "–"))[:6],
            r["acquisition"]["note"] or "–",
        ]
        for name, rounds in runs.items()
        for r in rounds
    ]
    body = (
        table_html(
            rows, ["loop", "round", "labels", "labels in all", "held-out score", "acquisition note"]
        )
        + "<h2>Held-out quality against labels used</h2>"
        + figure_html(curves)
        + "<h2>Where a round's time goes</h2>"
        + figure_html(stages, width=8, height=3.4)
    )
    return "prefopt loop: " + ", ".join(runs), body
