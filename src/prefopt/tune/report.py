"""The report of a tuning study (study.json): every trial, the history or the Pareto front, and
the settings' importances."""

from __future__ import annotations

import html
from pathlib import Path

from prefopt.figures import figure_html, table_html
from prefopt.files import read_json
from prefopt.tune.summary import StudySummary


def study_report(folder: Path) -> tuple[str, str]:
    """Title and body of a study's report (its study.json)."""
    study: StudySummary = read_json(folder / "study.json")
    names, trials = list(study["objectives"]), study["trials"]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = set(study["best"])

    def history(figure):
        if len(names) == 1:
            axes = figure.add_subplot(1, 1, 1)
            axes.plot(
                [t["number"] for t in done],
                [t["values"][0] for t in done],
                "o",
                label="complete trials",
            )
            pick = max if study["objectives"][names[0]] == "maximize" else min
            running = [pick(t["values"][0] for t in done[: i + 1]) for i in range(len(done))]
            axes.step([t["number"] for t in done], running, where="post", label="best so far")
            axes.xaxis.get_major_locator().set_params(integer=True)
            axes.set_xlabel("trial")
            axes.set_ylabel(names[0])
        else:
            axes = figure.add_subplot(1, 1, 1)
            for chosen, style, label in ((False, "o", "trials"), (True, "*", "Pareto front")):
                points = [t["values"][:2] for t in done if (t["number"] in best) == chosen]
                if points:
                    axes.plot(
                        *zip(*points, strict=True),
                        style,
                        markersize=9 if chosen else 6,
                        label=label,
                    )
            axes.set_xlabel(f"{names[0]} ({study['objectives'][names[0]]})")
            axes.set_ylabel(f"{names[1]} ({study['objectives'][names[1]]})")
        axes.legend(fontsize=8)

    def importances(figure):
        for n, (name, values) in enumerate(study["importances"].items(), 1):
            axes = figure.add_subplot(1, len(study["importances"]), n)
            axes.barh(list(values), list(values.values()))
            axes.set_title(f"importance for {name}")
            axes.invert_yaxis()

    keys = sorted({key for t in trials for key in t["params"]})
    rows = [
        [
            str(t["number"]) + (" *" if t["number"] in best else ""),
            t["state"].lower(),
            *(f"{v:.4g}" for v in (t["values"] or [float("nan")] * len(names))),
            *(
                f"{t['params'][k]:.4g}"
                if isinstance(t["params"].get(k), float)
                else str(t["params"].get(k, ""))
                for k in keys
            ),
            f"{t['seconds']:.0f}" if t["seconds"] else "",
            f"{t['overhead_seconds']:.1f}" if t["seconds"] else "",
            t["failure"] or "",
        ]
        for t in trials
    ]
    body = (
        f"<p>{len(trials)} trials, {len(done)} complete; * marks the best"
        f"{' (the Pareto front)' if len(names) > 1 else ''}. Storage: {html.escape(study['storage'])} "
        "(optuna-dashboard opens it as well).</p>"
        + table_html(rows, ["trial", "state", *names, *keys, "seconds", "overhead s", "failure"])
        + (
            ("<h2>History</h2>" if len(names) == 1 else "<h2>Pareto front</h2>")
            + figure_html(history)
            if done
            else ""
        )
        + (
            "<h2>Importances (Optuna's default evaluator)</h2>" + figure_html(importances)
            if study["importances"]
            else ""
        )
    )
    return f"prefopt tune: study {study['study_name']}", body
