"""The reward-model oracle: packed lists with the shared prompt give each completion the reward a
plain forward of (prompt + completion) gives it."""

import pytest
import torch

from prefopt.oracles import ListToJudge, make_oracle
from tiny import build_tiny_reward_model


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"), tiny_model)


def test_rewards_equal_a_plain_forward_of_each_completion(reward_model):
    from transformers import AutoModelForSequenceClassification

    from prefopt.data import PreferenceRecord, TokenizeSettings
    from prefopt.data.tokenize import tokenize_record

    oracle = make_oracle(
        "reward_model", {"model": str(reward_model), "precision": "fp32", "batch_size": 2}
    )
    lists = [
        ListToJudge("apple river stone", ("yes good", "no", "maybe later today")),
        ListToJudge([{"role": "user", "content": "hi"}], ("a longer answer here", "short")),
        ListToJudge("paper window", ("one", "two")),
    ]
    judgements = oracle.judge(lists)
    plain = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    for item, judgement in zip(lists, judgements, strict=True):
        example = tokenize_record(
            PreferenceRecord(item.prompt, item.completions, (0.0,) * len(item.completions)),
            oracle.tokenizer,
            TokenizeSettings(),
        )
        with torch.no_grad():
            expected = [
                plain(input_ids=torch.tensor([list(example.prompt_ids) + list(c)]))
                .logits[0, 0]
                .item()
                for c in example.completion_ids
            ]
        assert judgement.scores == pytest.approx(expected, abs=1e-5)
    assert oracle.identity()["weights"] and oracle.model.prefopt_engine.segment_attention


def test_a_model_that_is_not_a_reward_model_is_named(tiny_model):
    with pytest.raises(ValueError, match="is not a reward model .LlamaForCausalLM"):
        make_oracle("reward_model", {"model": str(tiny_model)})
