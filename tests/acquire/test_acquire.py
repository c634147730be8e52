"""Acquisition scores and batch selection against golden values worked by hand (Muldrew et al.
2024; Kirsch et al. 2023), and the properties the loop relies on."""

import pytest
import torch

from prefopt.acquire.scores import certainty, implicit_rewards, pair_uncertainty, predictive_entropy
from prefopt.acquire.selection import select, selection_probabilities


def test_predictive_entropy_is_the_mean_negative_log_prob_of_the_samples():
    assert predictive_entropy(torch.tensor([[-30.0, -25.0, -40.0, -35.0]])).item() == pytest.approx(
        32.5
    )
    normalized = predictive_entropy(
        torch.tensor([[-30.0, -20.0]]), torch.tensor([[10, 5]]), length_normalize=True
    )
    assert normalized.item() == pytest.approx((3 + 4) / 2)
    with pytest.raises(ValueError, match="needs the samples' lengths"):
        predictive_entropy(torch.tensor([[-1.0]]), length_normalize=True)


def test_certainty_of_a_pair_and_the_codes_uncertainty():
    rewards = implicit_rewards(
        torch.tensor([[-50.0, -48.0]]), torch.tensor([[-52.0, -47.0]]), beta=0.2
    )
    assert rewards[0].tolist() == pytest.approx([0.4, -0.2])
    assert certainty(rewards).item() == pytest.approx(0.6)
    assert pair_uncertainty(rewards).item() == pytest.approx(0.7086873875)


def test_certainty_of_a_list_is_the_mean_pairwise_gap_and_zero_at_round_zero():
    rewards = torch.tensor([[1.0, 0.0, -2.0, 5.0]])
    gaps = [1, 3, 4, 2, 5, 7]
    assert certainty(rewards).item() == pytest.approx(sum(gaps) / 6)
    mask = torch.tensor([[True, True, False, False]])
    assert certainty(rewards, mask).item() == pytest.approx(1.0)
    # the policy equals its reference before training: every implicit reward, and so certainty, is 0
    same = torch.tensor([[-10.0, -12.0, -9.0]])
    assert certainty(implicit_rewards(same, same, beta=0.1)).item() == 0.0


S = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("softmax", [0.3172632630, 0.2350344060, 0.2350344060, 0.2126679251]),
        ("power", [0.5, 0.2, 0.2, 0.1]),
        ("softrank", [0.4878048780, 0.1951219512, 0.1951219512, 0.1219512195]),
    ],
)
def test_first_pick_probabilities(rule, expected):
    assert selection_probabilities(S, rule, beta=1.0).tolist() == pytest.approx(expected, abs=1e-9)


def test_coldness_zero_is_uniform_and_large_coldness_is_top_k():
    assert selection_probabilities(S, "softmax", beta=0.0).tolist() == pytest.approx([0.25] * 4)
    generator = torch.Generator().manual_seed(0)
    assert sorted(select(S, 2, "softmax", beta=1e4, generator=generator)) == sorted(
        select(S, 2, "top")
    )
    # ties: the earlier first
    assert select(torch.tensor([1.0, 3.0, 3.0, 2.0]), 3, "top") == [1, 2, 3]


def test_sampling_without_replacement_matches_the_first_pick_probabilities():
    """Gumbel-top-k: over many seeded draws the first pick follows p, no index repeats, and a
    draw is reproducible from its seed."""
    expected = selection_probabilities(S, "softrank")
    counts = torch.zeros(4)
    for seed in range(4000):
        picked = select(S, 3, "softrank", generator=torch.Generator().manual_seed(seed))
        assert len(set(picked)) == 3
        counts[picked[0]] += 1
    assert (counts / 4000).tolist() == pytest.approx(expected.tolist(), abs=0.025)
    again = [select(S, 2, "power", generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert again[0] == again[1]


def test_power_with_too_few_positive_scores_falls_back_to_uniform():
    picked = select(
        torch.tensor([0.0, 0.0, 1.0]), 2, "power", generator=torch.Generator().manual_seed(1)
    )
    assert len(set(picked)) == 2
    with pytest.raises(ValueError, match="needs scores >= 0"):
        select(torch.tensor([-1.0, 1.0]), 1, "power")


def candidates(seed=0, lists=12, k=4, trained=True):
    from prefopt.acquire.strategies import Candidates

    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(lists, k, generator=generator) * 40 - 5
    ref = logps + (torch.randn(lists, k, generator=generator) * 3 if trained else 0)
    return Candidates(logps=logps, lengths=torch.full((lists, k), 10), ref_logps=ref)


@pytest.mark.parametrize("name", ["random", "entropy", "certainty", "hybrid"])
@pytest.mark.parametrize("rule", ["top", "softmax", "softrank"])
def test_a_round_replays_from_its_state(name, rule):
    from prefopt.acquire.strategies import Acquisition

    acquisition = Acquisition(name, rule=rule, oversample=2)
    state = acquisition.init(seed=3)
    first, after = acquisition.select(state, candidates(), budget=4)
    again, _ = acquisition.select(state, candidates(), budget=4)
    assert first == again and after.round == 1 and len(set(first.indices)) == 4
    if name == "random" or rule != "top":  # a later round draws afresh
        assert acquisition.select(after, candidates(), budget=4)[0].indices != first.indices


def test_entropy_and_certainty_pick_what_they_say():
    from prefopt.acquire.strategies import Acquisition

    pool = candidates()
    entropy = (-pool.logps).mean(1)
    assert (
        Acquisition("entropy").select(Acquisition("entropy").init(0), pool, 3)[0].indices
        == entropy.argsort(descending=True)[:3].tolist()
    )
    sure = certainty(implicit_rewards(pool.logps, pool.ref_logps, 0.1))
    picked = Acquisition("certainty").select(Acquisition("certainty").init(0), pool, 3)[0]
    assert picked.indices == sure.argsort(descending=True)[:3].tolist() and not picked.note
    hybrid = Acquisition("hybrid", oversample=2).select(Acquisition("hybrid").init(0), pool, 3)[0]
    top_entropy = set(entropy.argsort(descending=True)[:6].tolist())
    assert set(hybrid.indices) <= top_entropy


@pytest.mark.parametrize("name", ["certainty", "hybrid"])
def test_certainty_at_round_zero_falls_back_to_entropy_and_says_so(name):
    from prefopt.acquire.strategies import Acquisition

    pool = candidates(trained=False)  # the policy is its reference
    acquisition = Acquisition(name)
    selection, _ = acquisition.select(acquisition.init(0), pool, 3)
    assert "chose by entropy" in selection.note
    assert (
        selection.indices == Acquisition("entropy").select(acquisition.init(0), pool, 3)[0].indices
    )


def test_unknown_acquisitions_are_named():
    from prefopt.acquire.strategies import Acquisition

    with pytest.raises(ValueError, match="unknown acquisition function 'entropyy'"):
        Acquisition("entropyy")
