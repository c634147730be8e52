"""The reward objectives are the loss library's formulas on rewards: golden values by hand."""

import math

import numpy as np
import pytest
import torch

from prefopt.evaluate.stats import calibration
from prefopt.losses import ListBatch
from prefopt.reward import RewardConfig, RewardObjective

sigmoid = lambda z: 1 / (1 + math.exp(-z))


def rewards(values, scores=None, mask=None):
    values = torch.tensor(values)
    return ListBatch(
        logps=values,
        scores=None if scores is None else torch.tensor(scores),
        mask=None if mask is None else torch.tensor(mask),
    )


def test_bradley_terry_on_a_pair():
    out = RewardObjective("bradley_terry")(rewards([[1.5, 0.5], [0.0, 2.0]]))
    assert out.loss.tolist() == pytest.approx(
        [-math.log(sigmoid(1.0)), -math.log(sigmoid(-2.0))], abs=1e-6
    )
    assert out.metrics["reward_accuracy"].tolist() == [1.0, 0.0]
    assert "logps/chosen" not in out.metrics and "ranking_accuracy" not in out.metrics


def test_margin_scales_with_the_score_gap():
    # Llama 2's −log σ(r_w − r_l − m(r)), here m = 0.5 × score gap: gap 2 → m = 1
    out = RewardObjective("bradley_terry", margin=0.5)(rewards([[1.5, 0.5]], scores=[[3.0, 1.0]]))
    assert out.loss.item() == pytest.approx(-math.log(sigmoid(1.0 - 1.0)), abs=1e-6)


def test_plackett_luce_on_a_list_and_on_a_pair():
    r = [2.0, 1.0, 0.0]
    out = RewardObjective("plackett_luce")(rewards([r], scores=[[3.0, 2.0, 1.0]]))
    by_hand = -sum(r[k] - math.log(sum(math.exp(x) for x in r[k:])) for k in range(3))
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-6)
    pair = rewards([[0.3, -0.4]])
    assert RewardObjective("plackett_luce")(pair).loss.item() == pytest.approx(
        RewardObjective("bradley_terry")(pair).loss.item(), abs=1e-7
    )


def test_all_pairs_bradley_terry_on_a_list_averages_its_pairs():
    r, s = [2.0, 1.0, 0.5], [3.0, 2.0, 2.0]  # the tied pair (1.0, 0.5) is no comparison
    out = RewardObjective("bradley_terry")(rewards([r], scores=[s]))
    assert out.loss.item() == pytest.approx(
        -(math.log(sigmoid(1.0)) + math.log(sigmoid(1.5))) / 2, abs=1e-6
    )


def test_centering_is_trls_term_on_a_pair_and_twice_the_mean_squared_on_a_list():
    pair = RewardObjective("bradley_terry", center_rewards_coefficient=0.01)(rewards([[1.5, 0.5]]))
    assert pair.loss.item() == pytest.approx(
        -math.log(sigmoid(1.0)) + 0.01 * (1.5 + 0.5) ** 2, abs=1e-6
    )
    ragged = RewardObjective("plackett_luce", center_rewards_coefficient=1.0)(
        rewards([[1.0, 2.0, 99.0]], scores=[[2.0, 1.0, 0.0]], mask=[[True, True, False]])
    )
    assert ragged.metrics["centering"].item() == pytest.approx((2 * 1.5) ** 2)  # padding left out


def test_bad_objective_settings_fail_at_config_load():
    with pytest.raises(ValueError, match="margin: applies to the bradley_terry objective only"):
        RewardConfig(data="x.jsonl", objective="plackett_luce", margin=1.0)
    with pytest.raises(ValueError, match="objective"):
        RewardConfig(data="x.jsonl", objective="hinge")
    with pytest.raises(ValueError, match="loss"):
        RewardConfig(data="x.jsonl", loss="dpo")  # a policy's setting: unknown here


def test_calibration_golden():
    # margins 0 (p = .5, twice), ln 3 (p = .75) and −ln 3 (p = .25, a misranked pair)
    table = calibration(np.array([0.0, 0.0, math.log(3), -math.log(3)]), bins=4)
    # both orders of each pair: predicted .5,.5,.5,.5 (observed 1,1,0,0), .75 (1) & .25 (0), .25 (1) & .75 (0)
    assert table["count"] == [0, 2, 4, 2]
    assert table["predicted"][0] is None and table["observed"][0] is None
    assert table["observed"][1:] == pytest.approx([0.5, 0.5, 0.5])
    assert table["predicted"][1:] == pytest.approx([0.25, 0.5, 0.75])
    assert table["ece"] == pytest.approx((2 * 0.25 + 4 * 0.0 + 2 * 0.25) / 8)
    perfect = calibration(np.array([math.log(3)] * 3 + [-math.log(3)]), bins=4)
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-12)
