"""What is worth labelling, as numbers: the policy's predictive entropy of a prompt and the
implicit reward model's certainty about a list (Muldrew et al. 2024, "Active Preference Learning
for Large Language Models", arXiv 2402.08114, Sec. 4). Pure functions of log-probs; torch only."""

from __future__ import annotations

import torch


def predictive_entropy(
    sample_logps: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    length_normalize: bool = False,
) -> torch.Tensor:
    """Ĥ(x) = −(1/N)·Σ_n S_θ(y_n | x) for N samples y_n ~ π_θ(·|x) at temperature 1: a Monte-Carlo
    estimate of the entropy of the policy's answers to a prompt, in nats. `sample_logps` [P, N]
    are summed completion log-probs; with `length_normalize` each is divided by its length first
    (the paper sums; its answers had a fixed length)."""
    logps = sample_logps.double()
    if length_normalize:
        if lengths is None:
            raise ValueError("length_normalize needs the samples' lengths")
        logps = logps / lengths.double().clamp(min=1)
    return -logps.mean(-1)


def implicit_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """r̂(y) = β·(S_θ(y) − S_ref(y)), DPO's implicit reward (Rafailov et al. 2023, Eq. 5)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return beta * (logps.double() - ref_logps.double())


def certainty(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """How sure the implicit reward model is about a list: for a pair |r̂₁ − r̂₂| (Muldrew et al.);
    for K > 2 the mean of |r̂_i − r̂_j| over its pairs, which reduces to it at K = 2 and is 0 exactly
    when the model cannot tell any two completions apart. [B, K] -> [B]."""
    rewards = rewards.double()
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    gaps = (rewards.unsqueeze(2) - rewards.unsqueeze(1)).abs()
    pairs = (mask.unsqueeze(2) & mask.unsqueeze(1)).triu(diagonal=1)
    count = pairs.sum((1, 2))
    return torch.where(count > 0, (gaps * pairs).sum((1, 2)) / count.clamp(min=1), 0.0)


def pair_uncertainty(rewards: torch.Tensor) -> torch.Tensor:
    """u = 1 − 2·|σ(r̂₁ − r̂₂) − 1/2| for pairs [B, 2]: the released code's score, decreasing in
    |r̂₁ − r̂₂| (the same order as `certainty`, reversed)."""
    return 1 - 2 * (torch.sigmoid(rewards[:, 0].double() - rewards[:, 1].double()) - 0.5).abs()
