"""`prefopt demo`'s whole path on the tiny model, small: the task, both loops (entropy and random),
the unseen constraint types, the report with its PNG, and the same numbers from a second run."""

import json

import pytest

from prefopt.demo import demo

SMALL_TASK = {"train": 16, "heldout": 4, "unseen": 4}
SMALL_LOOP = {
    "rounds": 2,
    "labels_per_round": 3,
    "candidates_per_label": 2,
    "k": 3,
    "max_new_tokens": 8,
    "precision": "fp32",
    "train": {
        "loss": {"plackett_luce": 1.0, "sft": 0.5},
        "lora": True,
        "learning_rate": 1e-3,
        "max_steps": 2,
        "batch_size": 2,
    },
}


def run(tiny_model, out, **options):
    return demo(
        out, model=str(tiny_model), task_sizes=SMALL_TASK, loop_settings=SMALL_LOOP, **options
    )


@pytest.fixture(scope="module")
def result(tiny_model, tmp_path_factory):
    return run(tiny_model, tmp_path_factory.mktemp("demo") / "run", compare_random=True)


def test_the_whole_path_runs_and_reports(result):
    assert [arm.name for arm in result.arms] == ["entropy", "random"]
    # the tiny model's answers rarely differ in a constraint: round 0 finds a list to train on, and a
    # round that finds none keeps its policy for the next
    assert (result.arms[0].folder / "round-0" / "train" / "model").exists()
    for arm in result.arms:
        assert [r["round"] for r in arm.rounds] == [0, 1]
        assert {"score", "baseline_score", "win_rate"} <= set(arm.rounds[-1]["eval"])
    assert set(result.unseen["before"]["by_type"]) <= {
        "uppercase",
        "min_words",
        "paragraphs",
        "postscript",
    }
    assert result.unseen["before"]["prompts"] == 4
    page = result.report.read_text()
    assert (
        page.count("data:image/png;base64,") == 2
        and "held-out prompts (random acquisition)" in page
    )
    assert "Held-out answers, before and after" in page and page.count("<pre") == 2 * 4
    assert (result.folder / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert {"loop (entropy)", "loop (random)", "unseen types", "total"} <= set(result.seconds)


def test_a_second_run_gives_the_same_numbers(result, tiny_model, tmp_path):
    again = run(tiny_model, tmp_path / "again", compare_random=True)
    timings = {"seconds", "overhead_seconds", "overhead_share"}
    strip = lambda rounds: [{k: v for k, v in r.items() if k not in timings} for r in rounds]
    for first, second in zip(result.arms, again.arms, strict=True):
        assert strip(first.rounds) == strip(second.rounds)
    assert json.dumps(result.unseen) == json.dumps(again.unseen)


def test_resuming_a_finished_demo_redoes_nothing(result, tiny_model):
    resumed = run(tiny_model, result.folder, compare_random=True)
    assert resumed.seconds["total"] < result.seconds["total"]
    assert resumed.unseen == result.unseen
