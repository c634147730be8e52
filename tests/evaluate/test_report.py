"""`prefopt report` on real runs of a tiny model and real evals: one self-contained page whose
plots load in a real headless Chromium with no console error; bad paths are named.
Screenshots go to $PREFOPT_SCREENSHOTS (or the test's folder)."""

import os
import shutil
from pathlib import Path

import pytest

from prefopt.data import DataError
from prefopt.evaluate.run import EvalConfig, evaluate
from prefopt.report import report
from prefopt.reward import RewardConfig, reward_train
from prefopt.tune import TuneConfig, tune
from tiny import tiny_train_config, toy_rows, write_jsonl

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ANSWERS = [
    {
        "prompt": f"p{i}",
        "completions": [f"answer {i}" + " word" * i, f"answer, {i}"],
        "constraints": [{"type": "no_commas"}],
        "meta": {"lengths": [2 + i, 3]},
    }
    for i in range(8)
]


@pytest.fixture(scope="module")
def reports(tiny_model, tmp_path_factory):
    """The reports of a train run, an eval on prompts, one on data, a reward run and a study."""
    from prefopt.train import train

    folder = tmp_path_factory.mktemp("reports")
    data = write_jsonl(folder / "lists.jsonl", toy_rows(24, seed=6, k=3))
    train(
        tiny_train_config(
            tiny_model,
            data,
            folder / "run",
            loss={"plackett_luce": 1.0, "sft": 0.2},
            lora=True,
            max_steps=6,
            eval_every=2,
        )
    )
    baseline = [
        {**row, "completions": [f"{i}, comma", f"also, {i}"]} for i, row in enumerate(ANSWERS)
    ]
    evaluate(
        EvalConfig(
            generations=str(write_jsonl(folder / "a.jsonl", ANSWERS)),
            oracle="verifier",
            baseline_generations=str(write_jsonl(folder / "b.jsonl", baseline)),
            resamples=200,
            out=str(folder / "prompts.json"),
        )
    )
    evaluate(
        EvalConfig(
            model=str(folder / "run"),
            data=str(data),
            precision="fp32",
            resamples=200,
            out=str(folder / "data.json"),
        )
    )
    reward_train(
        RewardConfig(
            model=str(tiny_model),
            data=str(data),
            output_dir=str(folder / "rm"),
            precision="fp32",
            lora=False,
            learning_rate=1e-3,
            max_steps=6,
            eval_every=2,
            eval_fraction=0.25,
        )
    )
    tune(
        TuneConfig(
            base={
                "model": str(tiny_model),
                "data": str(data),
                "precision": "fp32",
                "lora": False,
                "max_steps": 2,
                "eval_fraction": 0.25,
            },
            space={
                "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                "loss": {"choices": ["plackett_luce", "lipo_lambda"]},
            },
            n_trials=4,
            output_dir=str(folder / "study"),
        )
    )
    return {
        "train": report(folder / "run"),
        "prompts": report(folder / "prompts.json"),
        "data": report(folder / "data.json"),
        "reward": report(folder / "rm"),
        "tune": report(folder / "study"),
    }


def test_each_report_is_one_page_with_its_plots(reports):
    expected = {
        "train": [
            "Loss and accuracy",
            "Reward margin and likelihood drift",
            "Optimisation",
            "Held-out evaluation, start and end",
        ],
        "prompts": ["Scores and win rate", "Distributions"],
        "data": ["Difficulty", "reward_accuracy"],
        "reward": [
            "prefopt reward model run",
            "Calibration and rewards by rank",
            "calibration_ece",
        ],
        "tune": ["prefopt tune: study prefopt", "History", "Importances", "learning_rate"],
    }
    for kind, path in reports.items():
        page = path.read_text()
        assert all(section in page for section in expected[kind]), kind
        assert page.count('src="data:image/png;base64,') >= 1 and "<script" not in page


def test_paths_that_are_not_runs_are_named(tmp_path):
    with pytest.raises(DataError, match="not a run"):
        report(tmp_path)
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="not a prefopt eval result"):
        report(tmp_path / "x.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0, "split": "eval", "loss": 1.0}\n')
    with pytest.raises(DataError, match="no training steps"):
        report(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_reports_open_in_a_browser_with_every_image_loaded(reports, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("PREFOPT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        for kind, path in reports.items():
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors = []
            page.on(
                "console",
                lambda message, errors=errors: (
                    errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
            page.goto(path.as_uri())
            loaded = page.evaluate(
                "[...document.images].map(i => i.complete && i.naturalWidth > 0)"
            )
            assert loaded and all(loaded), kind
            assert errors == [], kind
            page.screenshot(path=str(shots / f"report-{kind}.png"), full_page=True)
            page.close()
        browser.close()
