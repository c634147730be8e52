"""`prefopt eval` on real runs of a tiny model: answers scored by a verifier with intervals, a win
rate against a baseline, a KL of exactly 0 against itself; on data, the diagnostics agree with
the training run's own metrics; bad input is named."""

import json

import pytest

from prefopt.data import DataError
from prefopt.evaluate.run import EvalConfig, default_reference, evaluate
from tiny import tiny_train_config, toy_rows, write_jsonl

ANSWERS = [
    {
        "prompt": f"p{i}",
        "completions": [f"answer {i}", f"answer, {i}"],
        "constraints": [{"type": "no_commas"}],
        "meta": {"lengths": [2, 3]},
    }
    for i in range(6)
]
BASELINE = [
    {**row, "completions": [f"{i}, comma", f"also, {i}"], "meta": {"lengths": [3, 3]}}
    for i, row in enumerate(ANSWERS)
]


def test_answers_scored_by_a_verifier_against_a_baseline(tmp_path):
    result = evaluate(
        EvalConfig(
            generations=str(write_jsonl(tmp_path / "a.jsonl", ANSWERS)),
            baseline_generations=str(write_jsonl(tmp_path / "b.jsonl", BASELINE)),
            oracle="verifier",
            out=str(tmp_path / "eval.json"),
            resamples=200,
        )
    )
    assert result["score"]["value"] == 0.5 and result["baseline_score"]["value"] == 0.0
    assert result["win_rate"]["rate"]["value"] == 1.0 and result["win_rate"]["wins"] == 6
    assert result["win_rate"]["mean_length_a"] == 2.5
    assert json.loads((tmp_path / "eval.json").read_text()) == result


def test_a_baseline_with_other_prompts_is_named(tmp_path):
    other = [{**row, "prompt": "other " + row["prompt"]} for row in BASELINE]
    with pytest.raises(DataError, match="other prompts than the model"):
        evaluate(
            EvalConfig(
                generations=str(write_jsonl(tmp_path / "a.jsonl", ANSWERS)),
                baseline_generations=str(write_jsonl(tmp_path / "b.jsonl", other)),
                oracle="verifier",
                out=str(tmp_path / "eval.json"),
            )
        )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "give prompts"),
        ({"prompts": "p.jsonl"}, "needs an oracle"),
        ({"prompts": "p", "data": "d", "oracle": "verifier"}, "give prompts"),
    ],
)
def test_a_mode_must_be_chosen(settings, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**settings)


def test_an_empty_generations_file_is_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no valid rows"):
        evaluate(
            EvalConfig(
                generations=str(tmp_path / "empty.jsonl"),
                oracle="verifier",
                out=str(tmp_path / "eval.json"),
            )
        )


def test_generated_answers_and_a_kl_of_zero_against_the_model_itself(tiny_model, tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": f"question {i}", "constraints": [{"type": "max_words", "n": 3}]}
            for i in range(4)
        ],
    )
    result = evaluate(
        EvalConfig(
            model=str(tiny_model),
            prompts=str(prompts),
            baseline=str(tiny_model),
            reference=str(tiny_model),
            oracle="verifier",
            k=2,
            max_new_tokens=6,
            precision="fp32",
            out=str(tmp_path / "eval.json"),
            resamples=200,
        )
    )
    assert result["prompts"] == 4 and result["answers_per_prompt"] == 2
    assert result["kl"]["value"] == 0.0  # the same model: every sample's log-ratio is 0
    assert result["win_rate"]["rate"]["value"] == 0.5  # the same answers: every prompt ties
    assert (tmp_path / "eval.model.jsonl").exists() and (tmp_path / "eval.baseline.jsonl").exists()


def test_on_data_the_diagnostics_agree_with_the_training_run(tiny_model, tmp_path):
    from prefopt.train import train

    data = write_jsonl(tmp_path / "lists.jsonl", toy_rows(16, seed=5, k=3))
    run = train(
        tiny_train_config(
            tiny_model,
            data,
            tmp_path / "run",
            loss="dpo",
            lora=True,
            max_steps=3,
            eval_data=str(data),
        )
    )
    assert default_reference(str(tmp_path / "run")) == str(tiny_model)
    result = evaluate(
        EvalConfig(
            model=str(tmp_path / "run"),
            data=str(data),
            precision="fp32",
            resamples=200,
            out=str(tmp_path / "eval.json"),
        )
    )
    assert result["reward_accuracy"]["value"] == pytest.approx(
        run.eval_end["reward_accuracy"], abs=1e-6
    )
    assert result["ranking_accuracy"]["value"] == pytest.approx(
        run.eval_end["ranking_accuracy"], abs=1e-6
    )
    assert (
        0 <= result["idealized_ranking_accuracy"] <= 1
        and len(result["difficulty"]) == result["pairs"] == 48
    )
    untrained = evaluate(
        EvalConfig(
            model=str(tiny_model),
            reference=str(tiny_model),
            data=str(data),
            precision="fp32",
            out=str(tmp_path / "e0.json"),
            resamples=200,
        )
    )
    # the policy is its reference: every reward is 0
    assert untrained["reward_accuracy"]["value"] == 0.0
    # unanimous labels: the optimum ranks every pair
    assert untrained["idealized_ranking_accuracy"] == 1.0
    assert untrained["loss_above_threshold"] == pytest.approx(untrained["reference_misranks"])


@pytest.mark.slow
def test_the_command_line(prefopt_cli, tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", ANSWERS)
    result = prefopt_cli(
        "eval",
        "--generations",
        answers,
        "--oracle=verifier",
        f"--out={tmp_path / 'eval.json'}",
        "--resamples",
        200,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "score" in result.stdout and "0.500" in result.stdout and (tmp_path / "eval.json").exists()
    )
    bad = prefopt_cli("eval", "--generations", answers)
    assert bad.returncode == 2 and "needs an oracle" in bad.stderr
