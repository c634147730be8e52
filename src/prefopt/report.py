"""`prefopt report PATH`: the report of whatever PATH holds (a train or reward run, a loop, a tuning
study, an eval result), one self-contained HTML page; its path is returned."""

from __future__ import annotations

from pathlib import Path

from prefopt.data import DataError
from prefopt.evaluate.report import eval_report
from prefopt.figures import write_page
from prefopt.loop.report import loop_report
from prefopt.rl.report import is_rl_run, rl_report
from prefopt.train.report import train_report
from prefopt.tune.report import study_report


def report(path: str | Path, out: str | Path | None = None, compare: list[str | Path] = ()) -> Path:
    """Write the report of a train, reward or rl run folder (metrics.jsonl), a loop folder (rounds.jsonl,
    with other loops to overlay in `compare`), a tuning study (study.json) or an eval result."""
    path = Path(path)
    if path.is_dir() and (path / "study.json").exists():
        title, body = study_report(path)
        target = Path(out) if out else path / "report.html"
    elif path.is_dir() and (path / "rounds.jsonl").exists():
        title, body = loop_report([path, *map(Path, compare)])
        target = Path(out) if out else path / "report.html"
    elif path.is_dir() and (path / "metrics.jsonl").exists():
        title, body = rl_report(path) if is_rl_run(path) else train_report(path)
        target = Path(out) if out else path / "report.html"
    elif path.is_file() and path.suffix == ".json":
        title, body = eval_report(path)
        target = Path(out) if out else path.with_suffix(".html")
    else:
        raise DataError(
            f"{path}: not a run (a folder with metrics.jsonl or rounds.jsonl), a study (study.json) "
            "or an eval result (a .json file)"
        )
    return write_page(target, title, body)
