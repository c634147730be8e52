"""Unlearning objectives: push down the likelihood of completions to forget (by default the
items below the top score of each list, i.e. the rejected response of a pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefopt.losses.base import (
    ListBatch,
    LossOutput,
    check,
    check_choice,
    masked_mean,
    outputs,
    register_loss,
)


def _forget_items(batch: ListBatch, target: str) -> torch.Tensor:
    check_choice("target", target, ("worse", "all"))
    return batch.worse if target == "worse" else batch.mask


@register_loss(
    "npo",
    formula="−(2/β)·log σ(−βρ)",
    paper="Zhang et al. 2024 (NPO), arXiv 2404.05868, Eq. 3",
    family="unlearning",
    needs=("ref",),
)
def npo(batch: ListBatch, *, beta: float = 0.1, target: str = "worse") -> LossOutput:
    """Negative Preference Optimization: L = −(2/β)·log σ(−β·ρ(y)) on summed log-ratios,
    averaged over the forget items of each example. target "worse": items below the list's top
    score (the rejected response); "all": every item (a forget set). Combine with a retain loss
    by mixing, e.g. {"npo": 1, "sft": 1}. As β → 0 it becomes gradient ascent. Default β = 0.1.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[-20.0]]), ref_logps=torch.tensor([[-15.0]]),
        ...                lengths=torch.tensor([[10.0]]), scores=torch.zeros(1, 1))
        >>> round(LOSSES["npo"](batch, target="all").loss.mean().item(), 4)
        9.4815
    """
    check(beta > 0, "beta", beta, "must be > 0")
    rho = batch.log_ratios()
    forget = _forget_items(batch, target)
    per_item = -(2 / beta) * F.logsigmoid(-beta * rho)
    return outputs(masked_mean(per_item, forget), beta * rho, batch)


@register_loss(
    "simnpo",
    formula="−(2/β)·log σ(−(β/|y|)·S_θ − γ)",
    paper="Fan et al. 2024 (SimNPO), arXiv 2410.07163, Eq. 4",
    family="unlearning",
    needs=("lengths",),
)
def simnpo(
    batch: ListBatch,
    *,
    beta: float = 2.5,
    gamma: float = 0.0,
    gamma_scaled_by_beta: bool = False,
    target: str = "worse",
) -> LossOutput:
    """SimNPO, reference-free and length-normalised: L = −(2/β)·log σ(−(β/|y|)·S_θ(y) − γ).
    `gamma_scaled_by_beta=True` uses the official code's β·γ instead of γ (equal at γ = 0).
    Defaults β = 2.5, γ = 0 (official TOFU forget05 config). Items as in `npo`.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[-20.0]]), ref_logps=torch.tensor([[-15.0]]),
        ...                lengths=torch.tensor([[10.0]]), scores=torch.zeros(1, 1))
        >>> round(LOSSES["simnpo"](batch, beta=2.5, target="all").loss.mean().item(), 4)
        0.0054
    """
    check(beta > 0, "beta", beta, "must be > 0")
    check(gamma >= 0, "gamma", gamma, "must be >= 0")
    avg = batch.avg_logps()
    forget = _forget_items(batch, target)
    margin = beta * gamma if gamma_scaled_by_beta else gamma
    per_item = -(2 / beta) * F.logsigmoid(-beta * avg - margin)
    return outputs(masked_mean(per_item, forget), beta * avg, batch)
