"""The verifier oracle: functions by path or module, their three kinds of answer, failures that
score a completion 0 and are counted, and bad verifiers named before anything runs."""

import pytest

from prefopt.oracles import ListToJudge, make_oracle

VERIFIER = """
def by_length(prompt, completion, record):
    return len(completion) / 10

def exact(prompt, completion, record):
    return completion == record["answer"]

def checks(prompt, completion, record):
    return {"short": len(completion) < 5, "has_a": "a" in completion}

def fragile(prompt, completion, record):
    if completion == "boom":
        raise RuntimeError("cannot parse")
    return True

def wrong_type(prompt, completion, record):
    return [1]

def two_arguments(prompt, completion):
    return True
"""


@pytest.fixture
def verifier_file(tmp_path):
    path = tmp_path / "checks.py"
    path.write_text(VERIFIER)
    return path


def judged(verifier_file, name, completions, record=None):
    oracle = make_oracle("verifier", {"function": f"{verifier_file}:{name}"})
    return oracle, oracle.judge([ListToJudge("p", tuple(completions), record or {})])[0]


def test_numbers_bools_and_named_checks(verifier_file):
    assert judged(verifier_file, "by_length", ["abcde", "a"])[1].scores == (0.5, 0.1)
    assert judged(verifier_file, "exact", ["4", "5"], {"answer": "4"})[1].scores == (1.0, 0.0)
    judgement = judged(verifier_file, "checks", ["abc", "bbbbbbb", "xy"])[1]
    assert judgement.scores == (1.0, 0.0, 0.5)
    assert judgement.details[1] == {"short": False, "has_a": False}


def test_a_verifier_that_raises_fails_that_completion_and_is_told_once(verifier_file):
    told = []
    oracle = make_oracle("verifier", {"function": f"{verifier_file}:fragile"})
    oracle.on_failure = told.append
    judgements = oracle.judge(
        [ListToJudge("p", ("boom", "fine")), ListToJudge("p", ("boom", "boom"))]
    )
    assert [j.scores for j in judgements] == [(0.0, 1.0), (0.0, 0.0)]
    assert oracle.failures == {"RuntimeError: cannot parse": 3} and len(told) == 1
    oracle.function = oracle.function.__globals__["wrong_type"]
    assert oracle.judge([ListToJudge("p", ("x",))])[0].scores == (0.0,)
    assert any(kind.startswith("TypeError: returned list") for kind in oracle.failures)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing.py:f", "does not import: FileNotFoundError"),
        ("no_such_module_here:f", "does not import: ModuleNotFoundError"),
        ("{file}:absent", "has no function 'absent'"),
        ("{file}:two_arguments", r"must take \(prompt, completion, record\)"),
        ("lengthy", "give a built-in"),
    ],
)
def test_a_bad_verifier_is_named_when_the_oracle_is_made(verifier_file, spec, message):
    with pytest.raises(ValueError, match=message):
        make_oracle("verifier", {"function": spec.format(file=verifier_file)})


def test_unknown_oracles_and_options_are_named():
    with pytest.raises(
        ValueError,
        match="unknown oracle 'verifer'; valid oracles: judge, people, reward_model, ver",
    ):
        make_oracle("verifer")
    with pytest.raises(ValueError, match="functon: unknown setting"):
        make_oracle("verifier", {"functon": "constraints"})


def test_a_module_function_and_the_built_in():
    oracle = make_oracle("verifier", {"function": "prefopt.oracles.constraints:check_constraints"})
    item = ListToJudge(
        "p", ("no commas here", "one, two"), {"constraints": [{"type": "no_commas"}]}
    )
    assert (
        oracle.judge([item])[0].scores
        == (1.0, 0.0)
        == make_oracle("verifier").judge([item])[0].scores
    )
