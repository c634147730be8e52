"""Objectives for single answers with a verdict, desirable or undesirable, never compared with
another answer to their prompt: a thumbs up or down, a rating above or below a threshold. An
item's score is 1 (desirable) or 0 (undesirable). A list's loss is the weighted mean over its
answers, so on lists of one answer (how the trainer lays these objectives out) the batch mean is
the mean over the batch's answers, as TRL's KTOTrainer takes it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefopt.losses.base import ListBatch, LossOutput, check, check_beta, masked_mean, register_loss
from prefopt.losses.pairwise import RunningMean, reward_shift


def _weighted_mean(
    batch: ListBatch,
    desirable: torch.Tensor,
    undesirable: torch.Tensor,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """[B]: each answer's loss by its verdict, times its verdict's weight, averaged per list."""
    good = batch.verdicts()
    per_item = torch.where(good, desirable_weight * desirable, undesirable_weight * undesirable)
    return masked_mean(per_item, batch.mask, dim=1)


def _metrics(batch: ListBatch, rewards: torch.Tensor, **extra) -> dict[str, torch.Tensor]:
    """Implicit rewards and policy log-probs of the desirable (`chosen`) and undesirable
    (`rejected`) answers, TRL's names; NaN where a list has none of a kind."""
    good = batch.verdicts()
    rewards, logps = rewards.detach().float(), batch.logps.detach().float()

    def mean_of(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        count = where.sum(1)
        total = torch.where(where, values, 0.0).sum(1)
        return torch.where(count > 0, total / count.clamp(min=1), math.nan)

    bad = batch.mask & ~good
    return {
        "rewards": rewards,
        "rewards/chosen": mean_of(rewards, good),
        "rewards/rejected": mean_of(rewards, bad),
        "logps/chosen": mean_of(logps, good),
        "logps/rejected": mean_of(logps, bad),
        **extra,
    }


def _check_weights(desirable_weight: float, undesirable_weight: float) -> None:
    check(desirable_weight > 0, "desirable_weight", desirable_weight, "must be > 0")
    check(undesirable_weight > 0, "undesirable_weight", undesirable_weight, "must be > 0")


@register_loss(
    "kto",
    formula="λ_D·(1 − σ(β(ρ − z₀))) if desirable, λ_U·(1 − σ(β(z₀ − ρ))) if not; "
    "z₀ = max(0, mean ρ(x, y′)) over mismatched pairs",
    paper="Ethayarajh et al. 2024 (KTO), arXiv 2402.01306, Eq. 7",
    family="unpaired",
    needs=("ref", "mismatched"),
)
def kto(
    batch: ListBatch,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """Kahneman-Tversky optimization: an answer's implicit reward βρ (ρ = S_θ − S_ref) is valued
    against a reference point z₀, the policy's KL from the reference, estimated over the batch from
    each prompt paired with another prompt's answer, z₀ = max(0, mean(S_θ(y′|x) − S_ref(y′|x))),
    detached and averaged over every process's share. Desirable answers lose 1 − σ(β(ρ − z₀)),
    undesirable ones 1 − σ(β(z₀ − ρ)), weighted by λ_D and λ_U (the authors keep λ_D·n_D / λ_U·n_U
    in [1, 4/3]; the trainer warns outside it).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[-10.0], [-12.0]]), ref_logps=torch.tensor([[-11.0], [-11.0]]),
        ...                   scores=torch.tensor([[1.0], [0.0]]), mismatched_logps=torch.tensor([-20.0, -30.0]),
        ...                   mismatched_ref_logps=torch.tensor([-21.0, -30.0]))
        >>> [round(x, 4) for x in LOSSES["kto"](batch).loss.tolist()]  # z₀ = 0.5: 1 − σ(0.05), 1 − σ(0.15)
        [0.4875, 0.4626]
    """
    check_beta(beta)
    _check_weights(desirable_weight, undesirable_weight)
    rho = batch.log_ratios()
    z0 = batch.mismatched_kl().clamp(min=0)
    loss = _weighted_mean(
        batch,
        1 - torch.sigmoid(beta * (rho - z0)),
        1 - torch.sigmoid(beta * (z0 - rho)),
        desirable_weight,
        undesirable_weight,
    )
    return LossOutput(loss, _metrics(batch, beta * rho, kl=z0.expand(rho.shape[0])))


@register_loss(
    "apo_zero_unpaired",
    formula="λ_D·(1 − σ(βρ)) if desirable, λ_U·σ(βρ) if not",
    paper="D'Oosterlinck et al. 2024 (APO), arXiv 2408.06266, Eq. 7 (unpaired)",
    family="unpaired",
    needs=("ref",),
)
def apo_zero_unpaired(
    batch: ListBatch,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """Anchored preference optimization, zero anchor, on single answers: raise the likelihood of
    desirable answers and lower that of undesirable ones, each against the reference alone,
    1 − σ(βρ) and σ(βρ). For answers better than the model's own (so no reference point is
    estimated). Weighted by λ_D and λ_U as KTO.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[-10.0], [-12.0]]), ref_logps=torch.tensor([[-11.0], [-11.0]]),
        ...                   scores=torch.tensor([[1.0], [0.0]]))
        >>> [round(x, 4) for x in LOSSES["apo_zero_unpaired"](batch).loss.tolist()]  # 1 − σ(0.1), σ(−0.1)
        [0.475, 0.475]
    """
    check_beta(beta)
    _check_weights(desirable_weight, undesirable_weight)
    rho = batch.log_ratios()
    reward = torch.sigmoid(beta * rho)
    loss = _weighted_mean(batch, 1 - reward, reward, desirable_weight, undesirable_weight)
    return LossOutput(loss, _metrics(batch, beta * rho))


@register_loss(
    "bco",
    formula="−log σ(βρ − δ) if desirable, −log σ(−(βρ − δ)) if not; δ a running mean of βρ",
    paper="Jung et al. 2024 (BCO), arXiv 2404.04656, unpaired",
    family="unpaired",
    needs=("ref",),
    stateful=True,
)
def bco(
    batch: ListBatch,
    *,
    beta: float = 0.1,
    delta: float | None = None,
    running: RunningMean | None = None,
) -> LossOutput:
    """Binary classifier optimization on single answers: a logistic classifier whose logit is the
    implicit reward βρ shifted by δ, desirable answers class 1, undesirable class 0. δ is the
    running mean of the batches' mean rewards over all their answers (every process's share), as
    the authors and TRL's BCOTrainer keep it: a fixed `delta` if given; otherwise updated before
    the loss from the trainer's `running` state (not in evaluation); with neither, this batch's
    mean. The paper's underlying-distribution matching (a density-ratio classifier on prompt
    embeddings) is not offered. `bco_pair` is the paired form.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[-10.0], [-12.0]]), ref_logps=torch.tensor([[-11.0], [-11.0]]),
        ...                   scores=torch.tensor([[1.0], [0.0]]))
        >>> [round(x, 4) for x in LOSSES["bco"](batch).loss.tolist()]  # δ = 0: −log σ(0.1), −log σ(0.1)
        [0.6444, 0.6444]
    """
    check_beta(beta)
    rewards = beta * batch.log_ratios()
    delta = reward_shift(batch, rewards, delta, running)
    loss = _weighted_mean(batch, -F.logsigmoid(rewards - delta), -F.logsigmoid(-(rewards - delta)))
    shift = torch.full_like(rewards[:, 0], float(delta))
    return LossOutput(loss, _metrics(batch, rewards, reward_shift=shift))
