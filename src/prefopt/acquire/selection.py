"""Choosing a batch from acquisition scores. Top-k takes the highest; the stochastic rules of
Kirsch et al. ("Stochastic Batch Acquisition: A Simple Baseline for Deep Active Learning", arXiv
2106.12059, Sec. 3) sample k without replacement with probabilities from the scores, coldness β
(β → ∞ is top-k, β = 0 uniform): softmax p ∝ exp(β·s), power p ∝ s^β (s ≥ 0), soft-rank
p ∝ rank^−β (1 = highest; ties share their average rank). Sampling is Gumbel-top-k: perturb
the log-probabilities with Gumbel(0, 1) noise and take the k largest, which is distributed as
drawing one at a time without replacement."""

from __future__ import annotations

from typing import Literal

import torch

Rule = Literal["top", "softmax", "power", "softrank"]


def _average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1 = highest; tied scores share the mean of their places (scipy's rankdata(−s), 'average')."""
    higher = (scores.unsqueeze(0) > scores.unsqueeze(1)).sum(1).double()
    equal = (scores.unsqueeze(0) == scores.unsqueeze(1)).sum(1).double()
    return higher + (equal + 1) / 2


def log_weights(scores: torch.Tensor, rule: Rule, beta: float = 1.0) -> torch.Tensor:
    """Unnormalised log-probabilities of the first pick."""
    scores = scores.double()
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if rule == "softmax":
        return beta * scores
    if rule == "power":
        if bool((scores < 0).any()):
            raise ValueError("power sampling needs scores >= 0")
        return beta * scores.log() if beta > 0 else torch.zeros_like(scores)
    if rule == "softrank":
        return -beta * _average_ranks(scores).log()
    raise ValueError(f"unknown selection rule {rule!r}; valid: top, softmax, power, softrank")


def selection_probabilities(scores: torch.Tensor, rule: Rule, beta: float = 1.0) -> torch.Tensor:
    """The probability of each item being picked first."""
    return torch.softmax(log_weights(scores, rule, beta), 0)


def select(
    scores: torch.Tensor,
    k: int,
    rule: Rule = "top",
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[int]:
    """k item indices. `top`: the k highest (ties: the earlier item first). The others sample
    without replacement; if fewer than k items can be picked (power with zero scores), the rest
    are drawn uniformly from the others, as baal does."""
    count = scores.shape[0]
    k = min(k, count)
    if rule == "top":
        order = sorted(range(count), key=lambda i: -float(scores[i]))
        return order[:k]
    weights = log_weights(scores, rule, beta)
    uniform = torch.rand(count, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    gumbel = -torch.log(-torch.log(uniform))
    possible = torch.isfinite(weights)
    if int(possible.sum()) < k:
        weights = torch.zeros_like(weights)
    return torch.topk(weights + gumbel, k).indices.tolist()
