"""`prefopt score` and the answer cache: judgements written as training data, left-out lists
counted by reason, answers reused by a rerun and missed when the oracle changes, and the whole
path generate -> score -> train on a tiny model."""

import json

import pytest

from prefopt.data import DataError
from prefopt.oracles import (
    AnswerCache,
    Judgement,
    ListToJudge,
    ScoreConfig,
    judge,
    make_oracle,
    score,
)
from prefopt.oracles.base import ORACLES, Oracle, OracleOptions
from tiny import write_jsonl

CONSTRAINED = {"constraints": [{"type": "no_commas"}, {"type": "max_words", "n": 3}]}
ROWS = [
    {"prompt": "p1", "completions": ["one two", "one, two", "one two three four"], **CONSTRAINED},
    {"prompt": "p2", "completions": ["a, b", "c, d"], **CONSTRAINED},  # both fail the same: a tie
    {
        "prompt": "p3",
        "completions": ["short", "this is far too long"],
        **CONSTRAINED,
        "meta": {"seed": 1},
    },
]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_become_training_data_and_ties_are_counted(tmp_path):
    items = write_jsonl(tmp_path / "items.jsonl", ROWS)
    result = score(
        ScoreConfig(
            generations=str(items),
            oracle="verifier",
            out=str(tmp_path / "scored.jsonl"),
            cache=str(tmp_path / "answers.sqlite"),
        )
    )
    assert (result.lists, result.written) == (3, 2) and result.left_out == {
        "all completions tie": 1
    }
    rows = read(tmp_path / "scored.jsonl")
    assert rows[0]["scores"] == [1.0, 0.5, 0.5] and rows[0]["judgement"][1] == {
        "no_commas": False,
        "max_words": True,
    }
    assert rows[1]["meta"] == {"seed": 1} and rows[1]["constraints"] == CONSTRAINED["constraints"]
    from prefopt.data import load_records

    assert len(load_records(tmp_path / "scored.jsonl").records) == 2  # prefopt train reads it as is
    again = score(
        ScoreConfig(
            generations=str(items),
            oracle="verifier",
            out=str(tmp_path / "again.jsonl"),
            cache=str(tmp_path / "answers.sqlite"),
        )
    )
    assert again.from_cache == 3 and read(tmp_path / "again.jsonl") == rows


class _Counting(Oracle):
    """Counts calls; abstains on lists whose prompt says so."""

    name = "counting"
    Options = type(
        "CountingOptions", (OracleOptions,), {"__annotations__": {"version": int}, "version": 1}
    )
    calls = 0

    def judge(self, lists):
        type(self).calls += len(lists)
        return [
            Judgement(abstained="asked to")
            if item.prompt == "abstain"
            else Judgement(scores=tuple(float(len(c)) for c in item.completions))
            for item in lists
        ]


@pytest.fixture
def counting():
    ORACLES._entries["counting"] = _Counting
    _Counting.calls = 0
    yield
    del ORACLES._entries["counting"]


def test_the_cache_keys_on_identity_and_texts_and_keeps_no_abstention(counting, tmp_path):
    cache = AnswerCache(tmp_path / "answers.sqlite")
    lists = [ListToJudge("p", ("a", "bb")), ListToJudge("abstain", ("a", "b"))]
    first, hits = judge(make_oracle("counting"), lists, cache)
    assert hits == 0 and first[0].scores == (1.0, 2.0) and first[1].abstained == "asked to"
    again, hits = judge(make_oracle("counting"), lists, cache)
    assert hits == 1 and again == first and _Counting.calls == 3  # the abstention was asked again
    # other options: another oracle
    judge(make_oracle("counting", {"version": 2}), lists[:1], cache)
    judge(make_oracle("counting"), [ListToJudge("p", ("a", "bbb"))], cache)  # other texts
    assert _Counting.calls == 5
    cache.close()
    reopened = AnswerCache(tmp_path / "answers.sqlite")  # answers outlive the process
    assert judge(make_oracle("counting"), lists[:1], reopened)[1] == 1


def test_a_missing_file_and_an_unknown_oracle_are_named(tmp_path):
    with pytest.raises(DataError, match="none.jsonl: no such file"):
        score(
            ScoreConfig(
                generations=str(tmp_path / "none.jsonl"), oracle="verifier", out=str(tmp_path / "o")
            )
        )
    items = write_jsonl(tmp_path / "items.jsonl", ROWS)
    with pytest.raises(ValueError, match="unknown oracle 'judgee'"):
        score(ScoreConfig(generations=str(items), oracle="judgee", out=str(tmp_path / "o.jsonl")))
    assert not (tmp_path / "o.jsonl").exists()


def test_generate_then_score_then_train(tiny_model, tmp_path):
    """The policy's own samples, judged by a verifier, train the policy: no export step between."""
    from prefopt.generate import GenerateConfig, generate
    from prefopt.train import train
    from tiny import tiny_train_config

    verifier = tmp_path / "verify.py"
    verifier.write_text("def shorter(prompt, completion, record):\n    return -len(completion)\n")
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": f"question {i}: apple", "topic": i} for i in range(12)],
    )
    generate(
        GenerateConfig(
            model=str(tiny_model),
            prompts=str(prompts),
            out=str(tmp_path / "gen.jsonl"),
            k=3,
            max_new_tokens=8,
            precision="fp32",
        )
    )
    result = score(
        ScoreConfig(
            generations=str(tmp_path / "gen.jsonl"),
            oracle="verifier",
            oracle_options={"function": f"{verifier}:shorter"},
            out=str(tmp_path / "scored.jsonl"),
            cache="none",
        )
    )
    assert result.written + sum(result.left_out.values()) == 12 and result.written >= 8
    # the rows' fields travel
    assert {row["topic"] for row in read(tmp_path / "scored.jsonl")} <= set(range(12))
    run = train(
        tiny_train_config(
            tiny_model,
            tmp_path / "scored.jsonl",
            tmp_path / "run",
            loss="plackett_luce",
            max_steps=2,
        )
    )
    assert run.steps == 2 and run.eval_end


@pytest.mark.slow
def test_the_command_line(prefopt_cli, tmp_path):
    items = write_jsonl(tmp_path / "items.jsonl", ROWS)
    result = prefopt_cli(
        "score",
        items,
        "--oracle",
        "verifier",
        "--oracle.function=constraints",
        "--out",
        tmp_path / "scored.jsonl",
        "--cache",
        "none",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "2 of 3 lists scored" in result.stdout
        and "1 left out: all completions tie" in result.stdout
    )
    bad = prefopt_cli(
        "score",
        items,
        "--oracle",
        "verifier",
        "--oracle.function=nothing.py:f",
        "--out",
        tmp_path / "x.jsonl",
    )
    assert bad.returncode == 1 and "does not import" in bad.stderr and "Traceback" not in bad.stderr
