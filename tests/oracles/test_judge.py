"""The LLM judge: both orders asked and a flip counted as a tie, pairs aggregated into win counts
or Bradley–Terry strengths, the local backend's verdicts equal to a plain forward's letter
probabilities, and the http backend against a real OpenAI-compatible server on loopback."""

import itertools
import math

import pytest
import torch

from prefopt.oracles import ListToJudge, make_oracle
from prefopt.oracles.judge import DEFAULT_TEMPLATE, _aggregate, _bradley_terry


def verdicts(k, better):
    """Both orders of every pair answered by `better(i, j)`: True when the first shown wins."""
    return {(0, i, j): better(i, j) for i, j in itertools.permutations(range(k), 2)}


def test_the_same_winner_in_both_orders_wins_and_a_flip_is_a_tie():
    # 0 > 1 > 2 in both orders
    judgement = _aggregate(3, 0, verdicts(3, lambda i, j: i < j), "wins")
    assert judgement.scores == (2.0, 1.0, 0.0)
    # always "A"
    assert _aggregate(3, 0, verdicts(3, lambda i, j: True), "wins").scores == (1.0, 1.0, 1.0)
    assert _aggregate(3, 0, verdicts(3, lambda i, j: True), "wins").all_tied
    partial = verdicts(2, lambda i, j: i < j) | {(0, 1, 0): None}
    assert _aggregate(2, 0, partial, "wins").abstained  # the only pair abstained in one order


def test_bradley_terry_orders_by_wins_and_stays_finite():
    strengths = _bradley_terry([[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert strengths[0] > strengths[1] > strengths[2] and all(math.isfinite(s) for s in strengths)
    assert sum(strengths) == pytest.approx(0, abs=1e-9)
    tied = _bradley_terry([[0, 0.5], [0.5, 0]])
    assert tied[0] == pytest.approx(tied[1])


def test_a_template_without_its_fields_is_named(tiny_model):
    with pytest.raises(ValueError, match=r"template: it must contain \{b\}"):
        make_oracle("judge", {"model": str(tiny_model), "template": "{prompt} {a}"})


def test_local_verdicts_are_the_letter_probabilities_of_a_plain_forward(tiny_model):
    oracle = make_oracle("judge", {"model": str(tiny_model), "batch_size": 3})
    local = oracle.backend
    items = [
        ListToJudge("apple river", ("yes good", "no", "maybe later today")),
        ListToJudge("hi", ("a", "b b")),
    ]
    judgements = oracle.judge(items)
    for item, judgement in zip(items, judgements, strict=True):
        assert len(judgement.scores) == len(item.completions) and sum(
            judgement.scores
        ) == pytest.approx(len(item.completions) * (len(item.completions) - 1) / 2)
    prompts = [
        oracle.options.template.format(prompt="apple river", a="yes good", b="no"),
        oracle.options.template.format(prompt="hi", a="b b", b="a"),
    ]
    with torch.no_grad():
        for prompt, verdict in zip(prompts, local.verdicts(prompts), strict=True):
            probs = (
                local.model(input_ids=torch.tensor([local._ids(prompt)]))
                .logits[0, -1]
                .float()
                .softmax(-1)
            )
            assert verdict == bool(probs[local.letters[0]].sum() > probs[local.letters[1]].sum())


@pytest.fixture(scope="module")
def tiny_judge(tiny_model, tmp_path_factory):
    from tiny import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("tiny-judge"), tiny_model)


@pytest.fixture(scope="module")
def served_judge(tiny_judge):
    """`transformers serve` with the tiny judge, a real OpenAI-compatible server on loopback."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from label_helpers import free_port

    port = free_port()
    command = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        str(tiny_judge),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {process.stdout.read()[-3000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("transformers serve did not start in 120 s")
            time.sleep(0.5)
        yield url + "/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


LISTS = [
    ListToJudge("apple river", ("yes good", "no", "maybe later today")),
    ListToJudge("hi", ("a", "b b")),
]


PROMPTS = [
    DEFAULT_TEMPLATE.format(prompt=p, a=a, b=b)
    for p in ("apple river", "hi", "stone cloud")
    for a, b in itertools.permutations(["yes good", "no", "a", "b b"], 2)
]


def test_the_tiny_judge_answers_a_or_b_depending_on_the_prompt(tiny_judge):
    oracle = make_oracle("judge", {"model": str(tiny_judge)})
    assert {True, False} <= set(oracle.backend.verdicts(PROMPTS))
    judgements = oracle.judge(LISTS)
    assert all(j.abstained is None for j in judgements)
    assert len([d["verdict"] for j in judgements for d in j.details]) == 3 + 1


@pytest.mark.slow
def test_the_http_judge_over_a_real_server_agrees_with_the_local_one(tiny_judge, served_judge):
    """The same model behind `transformers serve` (its chat template, greedy) gives the verdicts
    the local backend reads from the letter probabilities."""
    http = make_oracle(
        "judge",
        {
            "model": str(tiny_judge),
            "backend": "http",
            "base_url": served_judge,
            "concurrency": 2,
            "timeout": 60,
        },
    )
    local = make_oracle("judge", {"model": str(tiny_judge)})
    assert http.backend.verdicts(PROMPTS) == local.backend.verdicts(PROMPTS)
    assert [j.details for j in http.judge(LISTS)] == [j.details for j in local.judge(LISTS)]
    http.close()


@pytest.mark.slow
def test_an_endpoint_that_is_down_stops_the_run_with_a_message(tiny_model):
    from label_helpers import free_port
    from prefopt.errors import OracleError

    oracle = make_oracle(
        "judge",
        {
            "model": "m",
            "backend": "http",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "retries": 1,
            "timeout": 2,
        },
    )
    with pytest.raises(OracleError, match="APIConnectionError.*stopped after the retries"):
        oracle.judge(LISTS[1:])


def test_replies_that_are_not_a_letter_are_abstentions():
    from prefopt.oracles.judge import parse_verdict

    for content, verdict in [
        ("A", True),
        (" b.", False),
        ("B) because", False),
        ("Answer A", None),
        ("", None),
        (None, None),
        ("Absolutely", None),
    ]:
        assert parse_verdict(content) is verdict, content
