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
        and "held-out prompts (loop, random acquisition)" in page
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


SMALL_RL = {"k": 3, "prompts_per_step": 4, "max_steps": 4, "eval_every": 2, "max_new_tokens": 8,
            "precision": "fp32", "learning_rate": 1e-3}  # fmt: skip


def test_the_rl_method_spends_its_budget_and_reports(tiny_model, tmp_path):
    """`--method rl`: GRPO steps on the same task and verifier; the held-out curve against the
    answers sampled, the unseen types measured with rl's final policy."""
    out = tmp_path / "rl"
    result = demo(out, model=str(tiny_model), task_sizes=SMALL_TASK, method="rl",
                  rl_settings=SMALL_RL)  # fmt: skip
    (arm,) = result.arms
    assert [answers for answers, _ in arm.curve] == [0, 24, 48]  # steps 0, 2, 4 x 4 prompts x 3
    assert (out / "rl" / "merged" / "config.json").exists() and result.unseen["after"][
        "prompts"
    ] == 4
    page = result.report.read_text()
    assert "held-out prompts (rl, grpo)" in page and page.count("<pre") == 2 * 4
    again = demo(out, model=str(tiny_model), task_sizes=SMALL_TASK, method="rl",
                 rl_settings=SMALL_RL)  # fmt: skip
    assert again.unseen == result.unseen and again.seconds["rl"] < result.seconds["rl"]


def test_the_rl_method_refuses_the_loops_options(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="people and --compare-random belong to the loop"):
        demo(tmp_path, model=str(tiny_model), method="rl", people=True)
    with pytest.raises(ValueError, match="method: 'ppo' is not one of loop, rl"):
        demo(tmp_path, model=str(tiny_model), method="ppo")


def test_the_command_line_names_a_bad_method(prefopt_cli, tmp_path):
    done = prefopt_cli("demo", "--out", tmp_path / "demo", "--method", "ppo")
    assert done.returncode == 1 and "method: 'ppo' is not one of loop, rl" in done.stderr
    assert "Traceback" not in done.stderr
    done = prefopt_cli("demo", "--out", tmp_path / "demo", "--method", "rl", "--people")
    assert done.returncode == 1 and "--compare-random belong to the loop" in done.stderr
