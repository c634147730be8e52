"""The statistics that say whether a model got better, each with its uncertainty: means and win
rates with bootstrap confidence intervals over prompts (Efron & Tibshirani 1993, the percentile
interval), AlpacaEval's length-controlled win rate in its minimal form (Dubois et al. 2024,
"Length-Controlled AlpacaEval", arXiv 2404.04475), an estimate of KL(policy ‖ reference) from the
policy's own samples, and the ranking diagnostics of Chen et al. 2024 ("Preference Learning
Algorithms Do Not Learn Preference Rankings", arXiv 2405.19534): idealized ranking accuracy
(Thm 3.1) and datapoint difficulty (Thm 4.1). Pure functions of numbers; numpy only."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # the confidence interval
    high: float
    n: int  # units resampled (prompts)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_mean(
    per_prompt: list[list[float]] | np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """The mean over prompts of each prompt's mean score, with a percentile bootstrap interval
    that resamples prompts (a prompt's K samples are not independent, so they are never
    resampled apart). Ragged lists are allowed."""
    means = np.array([np.mean(values) for values in per_prompt], dtype=np.float64)
    if means.size == 0:
        raise ValueError("no prompts to estimate from")
    return _percentile_interval(means, lambda sample: sample.mean(-1), resamples, level, seed)


def _percentile_interval(
    units: np.ndarray, statistic, resamples: int, level: float, seed: int
) -> Estimate:
    rng = np.random.default_rng(seed)
    draws = statistic(units[rng.integers(0, len(units), size=(resamples, len(units)))])
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Estimate(float(statistic(units[None])[0]), float(low), float(high), len(units))


@dataclasses.dataclass(frozen=True)
class WinRate:
    rate: Estimate  # wins + ties/2 over the prompts where both sides were judged
    wins: int
    ties: int
    losses: int
    failures: int  # prompts the judge failed on: counted apart, never as losses
    length_controlled: float | None = None
    mean_length_a: float | None = None
    mean_length_b: float | None = None

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "rate": self.rate.to_json()}


def win_rate(
    preferences: list[float | None],
    *,
    lengths_a: list[float] | None = None,
    lengths_b: list[float] | None = None,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of A over B from one preference per prompt: 1 A wins, 0 B wins, 0.5 a tie, None
    the judge failed. The interval is a paired bootstrap over prompts. With lengths, the
    length-controlled rate is given beside it."""
    judged = [(i, p) for i, p in enumerate(preferences) if p is not None]
    if not judged:
        raise ValueError("the judge failed on every prompt: no win rate")
    values = np.array([p for _, p in judged], dtype=np.float64)
    if not np.isin(values, (0.0, 0.5, 1.0)).all():
        raise ValueError("a preference is 1 (A wins), 0 (B wins), 0.5 (tie) or None (no verdict)")
    rate = _percentile_interval(values, lambda sample: sample.mean(-1), resamples, level, seed)
    controlled = mean_a = mean_b = None
    if lengths_a is not None and lengths_b is not None:
        kept = [i for i, _ in judged]
        a = np.array([lengths_a[i] for i in kept], dtype=np.float64)
        b = np.array([lengths_b[i] for i in kept], dtype=np.float64)
        controlled, mean_a, mean_b = (
            length_controlled_win_rate(values, a - b),
            float(a.mean()),
            float(b.mean()),
        )
    return WinRate(
        rate,
        int((values == 1).sum()),
        int((values == 0.5).sum()),
        int((values == 0).sum()),
        len(preferences) - len(judged),
        controlled,
        mean_a,
        mean_b,
    )


def length_controlled_win_rate(preferences: np.ndarray, length_differences: np.ndarray) -> float:
    """AlpacaEval's length control in its minimal form: a logistic model of the preference for A
    on the standardized length difference, P(A) = σ(θ₀ + θ₁·z), z = Δ / sd(Δ), fitted by maximum
    likelihood (ties as half a win), read at zero difference: σ(θ₀). A small ridge on θ₁ keeps the
    fit finite when length alone separates the outcomes."""
    y = np.asarray(preferences, dtype=np.float64)
    spread = float(np.std(length_differences))
    z = (
        np.asarray(length_differences, dtype=np.float64) / spread
        if spread > 0
        else np.zeros_like(y)
    )
    features = np.stack([np.ones_like(z), z], 1)
    theta = np.zeros(2)
    ridge = np.diag([1e-6, 1e-2])
    for _ in range(100):  # Newton's method on the ridge-penalised log-likelihood
        p = 1 / (1 + np.exp(-features @ theta))
        gradient = features.T @ (y - p) - ridge @ theta
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + ridge
        step = np.linalg.solve(hessian, gradient)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + math.exp(-theta[0])))


def kl_estimate(
    policy_logps: list[list[float]], ref_logps: list[list[float]], **bootstrap
) -> Estimate:
    """KL(π ‖ π_ref) ≈ mean over the policy's own samples y ~ π of S_π(y) − S_ref(y), per prompt,
    then over prompts with a bootstrap interval (an unbiased Monte-Carlo estimate; a single
    sample's term can be negative)."""
    per_prompt = [
        [p - r for p, r in zip(ps, rs, strict=True)]
        for ps, rs in zip(policy_logps, ref_logps, strict=True)
    ]
    return bootstrap_mean(per_prompt, **bootstrap)


# ----- ranking diagnostics (Chen et al. 2024) -----


def idealized_log_ratio(
    ref_log_ratio: np.ndarray, alpha: np.ndarray, beta: float, eps: float = 1e-3
) -> np.ndarray:
    """log π*(y_w)/π*(y_l) at the exact optimum of RLHF/DPO under Bradley–Terry (Thm 3.1):
    [S_ref(y_w) − S_ref(y_l)] + (1/β)·log(α / (1 − α)), with α the true preference probability
    for y_w, clipped away from 1 by `eps` as the paper does (α = 1 makes the optimum infinite)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    alpha = np.clip(np.asarray(alpha, dtype=np.float64), eps, 1 - eps)
    return np.asarray(ref_log_ratio, dtype=np.float64) + np.log(alpha / (1 - alpha)) / beta


def idealized_ranking_accuracy(
    ref_log_ratio: np.ndarray, alpha: np.ndarray, beta: float, eps: float = 1e-3
) -> float:
    """R*: the share of pairs the optimal policy ranks correctly, 1[π*(y_w) > π*(y_l)] (Cor. 3.3)."""
    return float((idealized_log_ratio(ref_log_ratio, alpha, beta, eps) > 0).mean())


def ranking_accuracy(chosen_logps: np.ndarray, rejected_logps: np.ndarray) -> float:
    """R: the share of pairs where the policy's own likelihood prefers the chosen answer,
    1[S_θ(y_w) ≥ S_θ(y_l)] (Def. 2.3). Length-normalised: pass per-token averages."""
    return float((np.asarray(chosen_logps) >= np.asarray(rejected_logps)).mean())


def difficulty(
    ref_chosen_logps: np.ndarray, ref_rejected_logps: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, c = log π_ref(y_l) − log π_ref(y_w) (c > 0: the reference ranks it wrongly) and
    the loss threshold −log σ(β·c): the trained model ranks the pair correctly iff its DPO loss is
    at most that (Thm 4.1)."""
    c = np.asarray(ref_rejected_logps, dtype=np.float64) - np.asarray(
        ref_chosen_logps, dtype=np.float64
    )
    return c, np.logaddexp(0.0, -beta * c)


def calibration(margins: np.ndarray, bins: int = 10) -> dict:
    """How well σ(r_w − r_l) predicts preferences (a reliability diagram and its expected
    calibration error, Guo et al. 2017, arXiv 1706.04599, Eq. 3). `margins` are r_better −
    r_worse of labelled pairs; each pair counts in both orders, (p, preferred) and (1 − p, not),
    so a well-calibrated model's observed rate in every bin of p equals the bin's mean p. Bins
    split [0, 1] evenly; empty bins have count 0 and rates None. ECE = Σ_b n_b/N·|observed_b −
    predicted_b|."""
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size == 0:
        raise ValueError("no labelled pairs to measure calibration on")
    p = 1.0 / (1.0 + np.exp(-margins))
    predicted = np.concatenate([p, 1.0 - p])
    observed = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(which, predicted, minlength=bins) / counts
        rate = np.bincount(which, observed, minlength=bins) / counts
    filled = counts > 0
    ece = float(
        np.sum(counts[filled] / predicted.size * np.abs(rate[filled] - mean_predicted[filled]))
    )
    present = lambda values: [float(v) if f else None for v, f in zip(values, filled, strict=True)]
    return {
        "ece": ece,
        "predicted": present(mean_predicted),
        "observed": present(rate),
        "count": counts.tolist(),
    }
