"""The evaluation statistics: golden values worked by hand (Chen et al. 2024), a bootstrap
interval that covers a known rate at its nominal level in simulation, and a length-controlled
win rate that removes a preference driven by length alone."""

import math

import numpy as np
import pytest

from prefopt.evaluate import (
    bootstrap_mean,
    difficulty,
    idealized_log_ratio,
    idealized_ranking_accuracy,
    kl_estimate,
    length_controlled_win_rate,
    ranking_accuracy,
    win_rate,
)


@pytest.mark.parametrize(
    "beta, ratio, correct",
    [(0.1, 7991.4131398387, 1), (1.0, 0.4060058497, 0), (10.0, 0.1510508459, 0)],
)
def test_the_optimal_policys_likelihood_ratio(beta, ratio, correct):
    log_ratio = idealized_log_ratio(np.array([-2.0]), np.array([0.75]), beta)
    assert math.exp(log_ratio[0]) == pytest.approx(ratio, rel=1e-9)
    assert idealized_ranking_accuracy(np.array([-2.0]), np.array([0.75]), beta) == correct


def test_unanimous_preferences_are_clipped_not_infinite():
    assert np.isfinite(idealized_log_ratio(np.array([0.0]), np.array([1.0]), 0.1)).all()


def test_difficulty_and_its_loss_threshold():
    c, threshold = difficulty(np.array([-12.0, -10.0]), np.array([-10.0, -12.0]), beta=0.1)
    assert c.tolist() == [2.0, -2.0]
    assert threshold.tolist() == pytest.approx([0.5981388694, 0.7981388694], abs=1e-10)


def test_ranking_accuracy_counts_ties_as_correct():
    assert ranking_accuracy(
        np.array([-1.0, -2.0, -3.0]), np.array([-2.0, -2.0, -1.0])
    ) == pytest.approx(2 / 3)


def test_a_bootstrap_interval_covers_a_known_rate_at_its_level():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(300):
        outcomes = rng.random((80, 4)) < 0.3  # 80 prompts, 4 samples each
        estimate = bootstrap_mean(outcomes.astype(float), resamples=1000, seed=trial)
        covered += estimate.low <= 0.3 <= estimate.high
    # nominal 0.95; a percentile interval runs a little narrow
    assert 0.90 <= covered / 300 <= 0.985


def test_bootstrap_resamples_prompts_not_samples():
    # two prompts, one always right and one always wrong: the interval spans both, whatever K
    estimate = bootstrap_mean([[1.0] * 50, [0.0] * 50], resamples=500)
    assert (
        estimate.value == 0.5 and estimate.low == 0.0 and estimate.high == 1.0 and estimate.n == 2
    )


def test_win_rate_counts_ties_as_half_and_failures_apart():
    result = win_rate([1, 1, 0.5, 0, None, None], resamples=500)
    assert result.rate.value == pytest.approx(2.5 / 4)
    assert (result.wins, result.ties, result.losses, result.failures) == (2, 1, 1, 2)
    with pytest.raises(ValueError, match="failed on every prompt"):
        win_rate([None, None])
    with pytest.raises(ValueError, match="is 1 .A wins."):
        win_rate([0.7])


def test_length_control_removes_a_preference_for_length_alone():
    rng = np.random.default_rng(1)
    differences = rng.normal(60, 60, 4000)  # A is usually longer
    z = differences / differences.std()
    # only length matters
    preferences = (rng.random(4000) < 1 / (1 + np.exp(-1.5 * z))).astype(float)
    raw = preferences.mean()
    controlled = length_controlled_win_rate(preferences, differences)
    assert raw > 0.65 and controlled == pytest.approx(0.5, abs=0.04)
    result = win_rate(
        list(preferences),
        lengths_a=list(differences + 100),
        lengths_b=[100.0] * 4000,
        resamples=200,
    )
    assert (
        result.length_controlled == pytest.approx(controlled)
        and result.mean_length_a > result.mean_length_b
    )


def test_length_control_leaves_a_real_preference():
    rng = np.random.default_rng(2)
    differences = rng.normal(0, 40, 3000)
    preferences = (rng.random(3000) < 0.8).astype(float)  # A is better, whatever the length
    assert length_controlled_win_rate(preferences, differences) == pytest.approx(0.8, abs=0.03)


def test_kl_estimate_from_the_policys_own_samples():
    estimate = kl_estimate([[-10.0, -12.0], [-8.0]], [[-11.0, -14.0], [-8.5]], resamples=200)
    assert estimate.value == pytest.approx(((1 + 2) / 2 + 0.5) / 2)
