"""`prefopt reward train` on the tiny model: it learns pairs and lists, its rewards equal a plain
transformers forward, the saved folder loads alone and as the reward_model oracle, and resume is
exact."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prefopt.data import PreferenceRecord, TokenizeSettings
from prefopt.data.tokenize import tokenize_record
from prefopt.oracles import ListToJudge, make_oracle
from prefopt.reward import RewardConfig, reward_train
from prefopt.train.checkpoint import latest_checkpoint
from tiny import Crash, crash_at, toy_rows, write_jsonl


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", toy_rows(64, seed=1))


@pytest.fixture(scope="module")
def lists_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "lists.jsonl", toy_rows(64, seed=2, k=4))


def config(tiny_model, data, out, **overrides):
    settings = dict(
        model=str(tiny_model),
        data=str(data),
        output_dir=str(out),
        precision="fp32",
        batch_size=8,
        learning_rate=1e-3,
        eval_fraction=0.25,
        warmup_ratio=0.0,
        scheduler="constant",
        epochs=3,
    )
    return RewardConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained_on_lists(tiny_model, lists_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm-lists")
    return reward_train(config(tiny_model, lists_file, out, lora=False, learning_rate=3e-4)), out


def test_learns_pairs_with_lora(tiny_model, pairs_file, tmp_path):
    result = reward_train(
        config(tiny_model, pairs_file, tmp_path, lora=True, objective="bradley_terry")
    )
    assert result.eval_start["reward_accuracy"] < 0.7
    assert result.eval_end["reward_accuracy"] > 0.9
    assert result.eval_end["loss"] < result.eval_start["loss"]
    assert (tmp_path / "adapters" / "adapter_config.json").exists()
    # the head was trained with the adapters: the merged model's head differs from a new one's
    merged = load_file(tmp_path / "model" / "model.safetensors")
    assert any("score" in key for key in merged)


def test_learns_lists_and_reports_ranking_and_calibration(trained_on_lists):
    result, out = trained_on_lists
    end = result.eval_end
    assert end["reward_accuracy"] > 0.85 and end["kendall_tau"] > 0.7 and end["ndcg"] > 0.9
    assert 0 <= end["calibration_ece"] <= 1 and sum(end["calibration"]["count"]) > 0
    by_rank = end["reward_by_rank"]
    assert by_rank["1"] > by_rank["4"]  # the best-ranked completions get the highest rewards
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "eval"][
        0
    ] == 0  # evaluated at the start


def test_the_saved_model_loads_alone_and_matches_the_engine(trained_on_lists):
    _, out = trained_on_lists
    oracle = make_oracle("reward_model", {"model": str(out / "model"), "precision": "fp32"})
    item = ListToJudge("question 1: apple river stone", ("green quick", "GREEN QUICK STONE"))
    judged = oracle.judge([item])[0]
    example = tokenize_record(
        PreferenceRecord(item.prompt, item.completions, (0.0, 0.0)),
        oracle.tokenizer,
        TokenizeSettings(),
    )
    rows = [list(example.prompt_ids) + list(ids) for ids in example.completion_ids]
    script = f"""
import json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({str(out / "model")!r}).eval()
tokenizer = AutoTokenizer.from_pretrained({str(out / "model")!r})
assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
print(json.dumps([model(input_ids=torch.tensor([row])).logits[0, 0].item() for row in {rows}]))
"""
    plain = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
    )
    # a packed row read at each completion's last token = transformers alone on each completion
    assert judged.scores == pytest.approx(plain, abs=1e-4)


def test_a_pad_token_that_ends_completions_is_not_saved_as_the_pad(tokenizer):
    from types import SimpleNamespace

    from prefopt.reward.run import distinct_pad

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token, tokenizer.unk_token = tokenizer.eos_token, "<|endoftext|>"
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=None))
    distinct_pad(tokenizer, model)
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_the_oracle_ranks_held_out_lists_with_it(trained_on_lists):
    _, out = trained_on_lists
    oracle = make_oracle("reward_model", {"model": str(out / "model"), "precision": "fp32"})
    rows = toy_rows(24, seed=9, k=4)
    judgements = oracle.judge(
        [ListToJudge(row["prompt"], tuple(row["completions"])) for row in rows]
    )
    agree = total = 0
    for row, judgement in zip(rows, judgements, strict=True):
        for i in range(4):
            for j in range(4):
                if row["scores"][i] > row["scores"][j]:
                    agree += judgement.scores[i] > judgement.scores[j]
                    total += 1
    assert agree / total > 0.8


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_equals_uninterrupted(tiny_model, lists_file, tmp_path, lora):
    settings = dict(
        max_steps=6,
        save_every=2,
        lora=lora,
        lora_r=4,
        lora_dropout=0.1,
        batch_size=4,
        scheduler="cosine",
        warmup_ratio=0.2,
        center_rewards_coefficient=0.01,
    )
    whole = reward_train(config(tiny_model, lists_file, tmp_path / "whole", **settings))
    with pytest.raises(Crash):
        reward_train(
            config(tiny_model, lists_file, tmp_path / "cut", **settings), on_step=crash_at(5)
        )
    resumed = reward_train(
        config(tiny_model, lists_file, tmp_path / "cut", **settings), resume=True
    )
    assert resumed.steps == whole.steps == 6
    a, b = (
        load_file(latest_checkpoint(tmp_path / run) / "trained.safetensors")
        for run in ("whole", "cut")
    )
    assert a.keys() == b.keys() and any("score" in key for key in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    assert resumed.eval_end["loss"] == pytest.approx(whole.eval_end["loss"])


def single_answer_rows(n: int, seed: int, feedback: str) -> list[dict]:
    """Each toy pair's answers apart: thumbs (the lowercase answer up) or ratings (4 and 1)."""
    rows = []
    for row in toy_rows(n, seed=seed):
        for answer, good in ((row["chosen"], True), (row["rejected"], False)):
            value = good if feedback == "label" else (4.0 if good else 1.0)
            rows.append({"prompt": row["prompt"], "completion": answer, feedback: value})
    return rows[::2] + rows[1::2]  # a prompt's two answers far apart in the file


@pytest.mark.parametrize(
    ("objective", "feedback"), [("logistic", "label"), ("regression", "rating")]
)
def test_learns_single_answers_with_a_pointwise_objective(
    tiny_model, tmp_path, objective, feedback
):
    data = write_jsonl(tmp_path / "singles.jsonl", single_answer_rows(48, 7, feedback))
    result = reward_train(config(tiny_model, data, tmp_path / "rm", lora=False, objective=objective,
                                 desirable_rating=3, learning_rate=1e-3, epochs=6))  # fmt: skip
    assert result.eval_end["loss"] < result.eval_start["loss"] * 0.7
    if objective == "logistic":  # σ(r) > 0.5 exactly for the answers given a thumbs up
        assert result.eval_end["accuracy"] > 0.9
    else:  # below the ratings' variance (2.25): the reward tells the answers apart
        assert result.eval_end["mse"] < 1.0
