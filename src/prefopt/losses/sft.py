"""Supervised objectives on the best completion of each list: NLL, DFT and the probability-based
family."""

from __future__ import annotations

import torch

from prefopt.losses.base import (
    ListBatch,
    LossOutput,
    check,
    check_choice,
    masked_mean,
    outputs,
    register_loss,
)


def _on_best(batch: ListBatch, per_item: torch.Tensor) -> torch.Tensor:
    """Mean over each list's top-scored items (all of them when the top is tied)."""
    return masked_mean(per_item, batch.best, dim=1)


def _token_average_logps(batch: ListBatch) -> torch.Tensor:
    token_logps, token_mask = batch.tokens()
    return masked_mean(token_logps.detach(), token_mask)


@register_loss(
    "sft",
    formula="−S_θ(y_best)/|y_best|",
    paper="negative log-likelihood (Pang et al. 2024 use it in IRPO)",
    family="sft",
    needs=("lengths",),
)
def sft(
    batch: ListBatch, *, length_normalize: bool = True, nll_reduction: str = "sequence"
) -> LossOutput:
    """Negative log-likelihood of the best completion of each list (the chosen one of a pair):
    L = −S_θ(y)/|y| (token mean, default) or −S_θ(y) (`length_normalize=False`, lengths then
    unneeded). `nll_reduction="sequence"` (default) averages tokens within a completion, then the
    batch averages completions; `"tokens"` takes one mean over every best-completion token of the
    batch, as TRL does: each example's loss is then −S_θ(y)·B / Σ_b |y_b|, whose batch mean is
    −Σ S / Σ |y|. Mixed with DPO as {"dpo": 1, "sft": α}, the `tokens` form is TRL's `rpo_alpha`
    (the default form equals it when the chosen completions have one length).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.log(torch.tensor([[[0.9, 0.5, 0.1]]]))
        >>> batch = ListBatch(logps=tokens.sum(-1), token_logps=tokens, scores=torch.ones(1, 1))
        >>> round(LOSSES["sft"](batch).loss.mean().item(), 4)
        1.0337
    """
    check_choice("nll_reduction", nll_reduction, ("sequence", "tokens"))
    if nll_reduction == "tokens":
        lengths = _on_best(batch, batch.safe_lengths())
        per_example = _on_best(batch, -batch.logps) * lengths.numel() / lengths.sum()
        return outputs(per_example, batch.avg_logps(), batch)
    logps = batch.avg_logps() if length_normalize else batch.logps
    return outputs(_on_best(batch, -logps), logps, batch)


@register_loss(
    "dft",
    formula="mean_t −sg(p_t)·log p_t",
    paper="Wu et al. 2025 (DFT), arXiv 2508.05629, Eq. 9",
    family="sft",
    needs=("tokens",),
)
def dft(batch: ListBatch) -> LossOutput:
    """Dynamic Fine-Tuning: token NLL re-weighted by the detached token probability,
    L = mean_t −sg(p_t)·log p_t over the completion tokens of the best completion (per-sequence
    token mean; the paper's global-batch mean is the same for one sequence). Its gradient is that
    of −p, so tokens the model finds very unlikely barely learn (the known limitation).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.log(torch.tensor([[[0.9, 0.5, 0.1]]]))
        >>> batch = ListBatch(logps=tokens.sum(-1), token_logps=tokens, scores=torch.ones(1, 1))
        >>> round(LOSSES["dft"](batch).loss.mean().item(), 4)
        0.2239
    """
    token_logps, token_mask = batch.tokens()
    per_token = -token_logps.detach().exp() * token_logps
    return outputs(
        _on_best(batch, masked_mean(per_token, token_mask)), _token_average_logps(batch), batch
    )


@register_loss(
    "prob_sft",
    formula="mean over kept tokens of −log p | 1−p | (1−p^q)/q",
    paper="Li et al. 2025 (Beyond Log Likelihood), arXiv 2510.00526",
    family="sft",
    needs=("tokens",),
)
def prob_sft(
    batch: ListBatch,
    *,
    objective: str = "one_minus_p",
    q: float = 10.0,
    keep: str = "all",
    threshold: float = 0.5,
) -> LossOutput:
    """Probability-based SFT objectives, per completion token p = π_θ(y_t|·), on the best
    completion, averaged over the kept tokens of each sequence:
    objective "nll": −log p; "one_minus_p": 1 − p (the paper's −p, prior-leaning, default);
    "power": (1 − p^q)/q (q = 10 is the paper's −p¹⁰; q → 0 recovers NLL).
    keep "top": only tokens with p ≥ threshold; "bottom": only p ≤ threshold; kept-out tokens
    leave the denominator too, and a sequence with no kept token contributes 0 (as the
    official code). The paper favours prior-leaning objectives where the model is already strong
    (math) and NLL where it is weak; official math default: power, q = 10.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.log(torch.tensor([[[0.9, 0.5, 0.1]]]))
        >>> batch = ListBatch(logps=tokens.sum(-1), token_logps=tokens, scores=torch.ones(1, 1))
        >>> round(LOSSES["prob_sft"](batch).loss.mean().item(), 4)
        0.5
    """
    check_choice("objective", objective, ("nll", "one_minus_p", "power"))
    check_choice("keep", keep, ("all", "top", "bottom"))
    check(q > 0, "q", q, "must be > 0")
    check(0 <= threshold <= 1, "threshold", threshold, "must be in [0, 1]")
    token_logps, token_mask = batch.tokens()
    if objective == "nll":
        per_token = -token_logps
    elif objective == "one_minus_p":
        per_token = 1 - token_logps.exp()
    else:
        per_token = -torch.expm1(q * token_logps) / q
    probs = token_logps.detach().exp()
    if keep == "top":
        token_mask = token_mask & (probs >= threshold)
    elif keep == "bottom":
        token_mask = token_mask & (probs <= threshold)
    per_item = masked_mean(per_token, token_mask)
    return outputs(
        _on_best(batch, per_item),
        _token_average_logps(batch),
        batch,
        kept_token_fraction=masked_mean(token_mask.float(), batch.tokens()[1]).mean(1),
    )
