"""Training on single answers with a verdict (thumbs) or a rating, on the tiny model: KTO, BCO and
APO-zero unpaired learn the toy task from thumbs alone; pairs train them too (each answer alone);
ratings need a threshold; thumbs and ratings of several answers to a prompt train pair objectives."""

import json
import random

import pytest

from prefopt.data.records import DataError
from prefopt.train import train
from tiny import tiny_train_config, toy_rows, write_jsonl


def thumbs_rows(n: int, seed: int) -> list[dict]:
    """Each toy pair's answers as two single answers with a label, apart, in a shuffled order."""
    rows = []
    for row in toy_rows(n, seed=seed):
        rows.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        rows.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    random.Random(seed).shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def thumbs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "thumbs.jsonl", thumbs_rows(48, seed=3))


def metrics(out, split):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == split]


def test_kto_learns_the_toy_task_from_thumbs_alone(tiny_model, thumbs_file, tmp_path):
    result = train(tiny_train_config(tiny_model, thumbs_file, tmp_path / "run", loss="kto",
                                     lora=False, max_steps=30, batch_size=8,
                                     loss_params={"kto": {"beta": 0.5}}))  # fmt: skip
    # the policy is the reference at step 0: ρ = 0, z₀ = 0, every answer loses 1 − σ(0)
    assert result.eval_start["loss"] == pytest.approx(0.5, abs=1e-6)
    assert result.eval_start["kl"] == 0.0
    assert result.eval_end["loss"] < result.eval_start["loss"] - 0.05
    assert result.eval_end["rewards/chosen"] > result.eval_end["rewards/rejected"] + 0.5
    assert any(line["kl"] > 0 for line in metrics(tmp_path / "run", "train"))


@pytest.mark.parametrize(("loss", "start"), [("bco", 0.6931471806), ("apo_zero_unpaired", 0.5)])
def test_pairs_train_the_single_answer_objectives_answer_by_answer(
    tiny_model, tmp_path, loss, start
):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(24, seed=1))
    result = train(tiny_train_config(tiny_model, pairs, tmp_path / "run", loss=loss, lora=False,
                                     max_steps=12, batch_size=8))  # fmt: skip
    assert result.eval_start["loss"] == pytest.approx(start, abs=1e-6)
    assert result.eval_end["rewards/chosen"] > result.eval_end["rewards/rejected"]


def test_ratings_of_single_answers_need_a_threshold(tiny_model, tmp_path):
    rows = [{"prompt": r["prompt"], "completion": r["completion"], "rating": 5 if r["label"] else 2}
            for r in thumbs_rows(8, seed=4)]  # fmt: skip
    data = write_jsonl(tmp_path / "ratings.jsonl", rows)
    with pytest.raises(DataError, match="desirable_rating"):
        train(tiny_train_config(tiny_model, data, tmp_path / "a", loss="kto", max_steps=1))
    result = train(tiny_train_config(tiny_model, data, tmp_path / "b", loss="kto", max_steps=2,
                                     desirable_rating=4))  # fmt: skip
    assert result.steps == 2


def test_thumbs_of_several_answers_to_a_prompt_train_pair_objectives(
    tiny_model, thumbs_file, tmp_path
):
    result = train(
        tiny_train_config(tiny_model, thumbs_file, tmp_path / "run", loss="dpo", max_steps=2)
    )
    assert result.eval_start["loss"] == pytest.approx(0.6931471806, abs=1e-6)
    lone = write_jsonl(tmp_path / "lone.jsonl", thumbs_rows(4, seed=5)[:1] + toy_rows(4, seed=6))
    with pytest.raises(DataError, match='row 1: one answer with a "label".*kto'):
        train(tiny_train_config(tiny_model, lone, tmp_path / "lone", loss="dpo", max_steps=1))
