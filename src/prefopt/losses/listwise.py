"""Listwise objectives for K ≥ 2 scored completions per prompt. At K=2 with scores (1, 0) each
reduces to a pairwise counterpart (tested)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefopt.losses.base import (
    ListBatch,
    LossOutput,
    check,
    check_beta,
    check_choice,
    outputs,
    rank_gains,
    register_loss,
)


def _masked_log_softmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over valid items; 0 at masked ones (they must be excluded by the caller)."""
    return torch.log_softmax(values.masked_fill(~mask, -math.inf), dim=-1).masked_fill(~mask, 0.0)


@register_loss(
    "plackett_luce",
    formula="−Σ_k [s_k − log Σ_{j ranked ≤ k} exp s_j],  s = βρ",
    paper="Rafailov et al. 2023, arXiv 2305.18290, App. A.3 (DPO-PL / ListMLE)",
    family="listwise",
    needs=("ref",),
)
def plackett_luce(batch: ListBatch, *, beta: float = 0.1, top_k: int | None = None) -> LossOutput:
    """Plackett–Luce DPO: with s_i = β·ρ(y_i) and the order given by the scores,
    L = −Σ_k [s_τ(k) − log Σ_{j≥k} exp s_τ(j)]. K=2 is exactly DPO.
    `top_k` keeps only the factors of the first k places (a top-k partial ranking).
    Ties use Breslow's rule (as in Cox regression): an item's denominator holds every item
    scored at or below it, so tied items are treated alike and the order of items never
    matters. Without ties this is the usual PL likelihood.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[2.0, 6.0, -4.0]]), ref_logps=torch.zeros(1, 3),
        ...                lengths=torch.tensor([[4.0, 6.0, 5.0]]), scores=torch.tensor([[0.8, 0.5, 0.2]]))
        >>> round(LOSSES["plackett_luce"](batch).loss.mean().item(), 4)
        1.4253
    """
    check_beta(beta)
    check(top_k is None or top_k >= 1, "top_k", top_k, "must be >= 1 or None")
    rewards = beta * batch.log_ratios()
    scores, mask = batch.scores, batch.mask
    k = scores.shape[1]
    at_or_below = (scores.unsqueeze(1) <= scores.unsqueeze(2)) & mask.unsqueeze(1)  # [B, item, j]
    at_or_below = at_or_below | torch.eye(k, dtype=torch.bool, device=scores.device)
    denominators = torch.logsumexp(
        rewards.unsqueeze(1).expand(-1, k, -1).masked_fill(~at_or_below, -math.inf), -1
    )
    terms = rewards - denominators
    used = mask
    if top_k is not None:
        places_above = ((scores.unsqueeze(1) > scores.unsqueeze(2)) & mask.unsqueeze(1)).sum(-1)
        used = mask & (places_above < top_k)
    return outputs(-torch.where(used, terms, 0.0).sum(1), rewards, batch)


@register_loss(
    "pro",
    formula="Σ_k −log softmax([A_k/T_k^k, A_i/T_k^i]_{i>k})_k + w·(K−1)²·(−S_top)",
    paper="Song et al. 2024 (PRO), arXiv 2306.17492, Eq. 5",
    family="listwise",
    needs=("lengths",),
)
def pro(batch: ListBatch, *, sft_weight: float = 0.05) -> LossOutput:
    """PRO, reference-free, on token-averaged log-probs A_θ. Items must be sorted best
    first (non-increasing scores; the trainer's batches are). Stage k treats item k as the
    positive against all lower items with reward-gap temperatures 1/T_k^i = r_k − r_i,
    1/T_k^k = max_{i>k}(r_k − r_i):  L_k = −log [e^{A_k/T_k^k} / (e^{A_k/T_k^k} + Σ_{i>k} e^{A_i/T_k^i})].
    L = Σ_k L_k + sft_weight·(K−1)²·(−S_θ(y_top)). Default sft_weight 0.05 (official train_hh.sh).
    Tied rewards give a zero multiplier, so a tie contributes a constant and no gradient.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[2.0, 6.0, -4.0]]), ref_logps=torch.zeros(1, 3),
        ...                lengths=torch.tensor([[4.0, 6.0, 5.0]]), scores=torch.tensor([[0.8, 0.5, 0.2]]))
        >>> round(LOSSES["pro"](batch).loss.mean().item(), 4)
        0.9587
    """
    check(sft_weight >= 0, "sft_weight", sft_weight, "must be >= 0")
    avg, rewards, mask = batch.avg_logps(), batch.scores, batch.mask
    k = rewards.shape[1]
    positions = torch.arange(k, device=rewards.device)
    later = positions.unsqueeze(0) > positions.unsqueeze(1)  # [stage, j]: j after stage
    both_valid = mask.unsqueeze(2) & mask.unsqueeze(1)
    unsorted = (
        (later & both_valid & (rewards.unsqueeze(1) > rewards.unsqueeze(2))).flatten(1).any(1)
    )
    if bool(unsorted.any()):
        row = int(unsorted.nonzero()[0])
        raise ValueError(
            f"scores must be sorted best first (non-increasing); row {row} is not: "
            f"{rewards[row][mask[row]].tolist()}"
        )
    gaps = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # [B, stage, j] = r_stage − r_j
    negatives = later & both_valid
    stage_gap = gaps.masked_fill(~negatives, -math.inf).amax(-1)
    active = negatives.any(-1)
    stage_gap = torch.where(active, stage_gap, 0.0)
    logits = (avg.unsqueeze(1) * gaps).masked_fill(~negatives, -math.inf)
    logits = torch.diagonal_scatter(logits, avg * stage_gap, dim1=1, dim2=2)
    stage_loss = -torch.diagonal(torch.log_softmax(logits, -1), dim1=1, dim2=2)
    ranking = torch.where(active, stage_loss, 0.0).sum(1)
    n_valid = mask.sum(1).to(avg.dtype)
    top_logps = batch.logps.gather(1, mask.to(torch.int8).argmax(1, keepdim=True)).squeeze(1)
    sft = sft_weight * (n_valid - 1) ** 2 * -top_logps
    return outputs(ranking + sft, avg, batch, pro_ranking=ranking.detach(), pro_sft=sft.detach())


def _rank_gains(scores: torch.Tensor, mask: torch.Tensor, gain: str) -> torch.Tensor:
    if gain == "exp2":
        return 2.0**scores - 1.0
    if gain == "linear":
        return scores
    return rank_gains(scores, mask)


def _lambda_weighted_logistic(
    batch: ListBatch, scores_model: torch.Tensor, *, gain: str, discount: str
):
    """Σ_{ψ_i > ψ_j} Δ_ij · log(1 + exp(−(s_i − s_j))), Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|,
    τ the 1-based rank of each item by the current model scores (stable by item index)."""
    with torch.no_grad():
        mask = batch.mask
        order = torch.sort(
            scores_model.masked_fill(~mask, -math.inf), dim=1, descending=True, stable=True
        ).indices
        places = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=scores_model.dtype)
        ranks = torch.empty_like(scores_model).scatter_(1, order, places.expand_as(scores_model))
        inv_discount = 1.0 / (torch.log1p(ranks) if discount == "ln" else torch.log2(1.0 + ranks))
        gains = _rank_gains(batch.scores, mask, gain)
        gain_b, gain_w = batch.pairs.take(gains)
        disc_b, disc_w = batch.pairs.take(inv_discount)
        weights = (gain_b - gain_w).abs() * (disc_b - disc_w).abs()
    better, worse = batch.pairs.take(scores_model)
    per_pair = weights * -F.logsigmoid(better - worse)
    return torch.where(batch.pairs.valid, per_pair, 0.0).sum(1)


@register_loss(
    "lipo_lambda",
    formula="Σ_{ψi>ψj} Δ_ij·log(1+e^{−(s_i−s_j)}),  Δ = |G_i−G_j|·|1/D(τ_i)−1/D(τ_j)|",
    paper="Liu et al. 2024 (LiPO), arXiv 2402.01878, Eq. 9",
    family="listwise",
    needs=("ref",),
)
def lipo_lambda(batch: ListBatch, *, beta: float = 0.05, discount: str = "ln") -> LossOutput:
    """LiPO-λ: LambdaLoss with s_i = β·ρ(y_i), gain G = 2^ψ − 1, discount D(τ) = log(1+τ)
    where τ is the rank of the item by the current s (Δ carries no gradient). `discount="log2"`
    is TF-Ranking's base (rescales Δ by ln 2). Summed over pairs. Defaults β = 0.05, natural log
    (the paper's; K = 8 lists in its main runs, from memory, unverified).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[2.0, 6.0, -4.0]]), ref_logps=torch.zeros(1, 3),
        ...                lengths=torch.tensor([[4.0, 6.0, 5.0]]), scores=torch.tensor([[0.8, 0.5, 0.2]]))
        >>> round(LOSSES["lipo_lambda"](batch).loss.mean().item(), 4)
        0.2918
    """
    check_beta(beta)
    check_choice("discount", discount, ("ln", "log2"))
    rewards = beta * batch.log_ratios()
    return outputs(
        _lambda_weighted_logistic(batch, rewards, gain="exp2", discount=discount), rewards, batch
    )


@register_loss(
    "rank_dpo",
    formula="LiPO-λ weights on a chosen score s and gain",
    paper="Karthik et al. 2024 (RankDPO), arXiv 2410.18013",
    family="listwise",
    needs=("ref",),
)
def rank_dpo(
    batch: ListBatch,
    *,
    beta: float = 0.1,
    score: str = "log_ratio",
    gain: str = "rank",
    discount: str = "ln",
) -> LossOutput:
    """RankDPO: DCG-weighted pairwise logistic loss, Σ_{ψ_i > ψ_j} Δ_ij·(−log σ(s_i − s_j)),
    with the LiPO-λ weights on any score:
    score: "log_ratio" s = βρ (default); "avg_log_ratio" s = β·ρ/|y|; "avg_logps" s = β·A_θ (no reference).
    gain: "rank" (default) G = 2^rel − 1 with rel the number of items scored below, so any score
    scale works (rewards, ranks, votes); "exp2" G = 2^ψ − 1 (LiPO-λ on ψ); "linear" G = ψ.
    The paper's exact gain is unverified; it is configuration.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[2.0, 6.0, -4.0]]), ref_logps=torch.zeros(1, 3),
        ...                lengths=torch.tensor([[4.0, 6.0, 5.0]]), scores=torch.tensor([[0.8, 0.5, 0.2]]))
        >>> round(LOSSES["rank_dpo"](batch).loss.mean().item(), 4)
        1.4462
    """
    check_beta(beta)
    check_choice("score", score, ("log_ratio", "avg_log_ratio", "avg_logps"))
    check_choice("gain", gain, ("rank", "exp2", "linear"))
    check_choice("discount", discount, ("ln", "log2"))
    if score == "log_ratio":
        rewards = beta * batch.log_ratios()
    elif score == "avg_log_ratio":
        rewards = beta * batch.log_ratios() / batch.safe_lengths()
    else:
        rewards = beta * batch.avg_logps()
    return outputs(
        _lambda_weighted_logistic(batch, rewards, gain=gain, discount=discount), rewards, batch
    )


@register_loss(
    "list_softmax",
    formula="−Σ_i (ψ_i/Σψ)·log softmax(s)_i,  s = βρ",
    paper="Liu et al. 2024 (LiPO), arXiv 2402.01878 (ListNet softmax)",
    family="listwise",
    needs=("ref",),
)
def list_softmax(batch: ListBatch, *, beta: float = 0.05) -> LossOutput:
    """Softmax list cross-entropy (ListNet-like): L = −Σ_i (ψ_i / Σ_j ψ_j)·log softmax(s)_i,
    s = β·ρ. Scores must be ≥ 0 with a positive sum in every list. At K=2 with scores (1, 0)
    this is DPO. (TF-Ranking's extra per-list weight Σψ is not applied.)

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[2.0, 6.0, -4.0]]), ref_logps=torch.zeros(1, 3),
        ...                lengths=torch.tensor([[4.0, 6.0, 5.0]]), scores=torch.tensor([[0.8, 0.5, 0.2]]))
        >>> round(LOSSES["list_softmax"](batch).loss.mean().item(), 4)
        1.0593
    """
    check_beta(beta)
    scores, mask = batch.scores, batch.mask
    totals = scores.sum(1)
    bad = ((scores < 0) & mask).any(1) | (totals <= 0)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"scores must be >= 0 with a positive sum per list; row {row} has "
            f"{scores[row][mask[row]].tolist()}"
        )
    rewards = beta * batch.log_ratios()
    targets = scores / totals.unsqueeze(1)
    return outputs(-(targets * _masked_log_softmax(rewards, mask)).sum(1), rewards, batch)


def _soft_targets(batch: ListBatch, temperature: float) -> torch.Tensor:
    return torch.softmax(batch.scores.masked_fill(~batch.mask, -math.inf) / temperature, dim=1)


@register_loss(
    "infonca",
    formula="−Σ_i q_i·log softmax(βρ)_i,  q = softmax(ψ/α)",
    paper="Chen et al. 2024 (NCA), arXiv 2402.05369, Eq. 6",
    family="listwise",
    needs=("ref",),
)
def infonca(batch: ListBatch, *, beta: float = 0.1, temperature: float = 1e-3) -> LossOutput:
    """InfoNCA, K-response form: soft targets q = softmax(ψ/temperature), r = β·ρ,
    L = −Σ_i q_i·log softmax(r)_i. With hard pair labels this is DPO. Default temperature 1e-3
    (official reward_trainer.py; near one-hot targets). Tied top scores share the target mass
    (the official code's +0.01 tie-break on the first response is not applied).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[2.0, 6.0, -4.0]]), ref_logps=torch.zeros(1, 3),
        ...                lengths=torch.tensor([[4.0, 6.0, 5.0]]), scores=torch.tensor([[0.8, 0.5, 0.2]]))
        >>> round(LOSSES["infonca"](batch).loss.mean().item(), 4)
        1.1121
    """
    check_beta(beta)
    check(temperature > 0, "temperature", temperature, "must be > 0")
    rewards = beta * batch.log_ratios()
    targets = _soft_targets(batch, temperature)
    return outputs(-(targets * _masked_log_softmax(rewards, batch.mask)).sum(1), rewards, batch)


@register_loss(
    "nca",
    formula="−Σ_i q_i·log σ(r_i) − (1/K)·Σ_i log σ(−r_i),  r = βρ",
    paper="Chen et al. 2024 (NCA), arXiv 2402.05369, Eq. 7",
    family="listwise",
    needs=("ref",),
)
def nca(batch: ListBatch, *, beta: float = 0.1, temperature: float = 1e-3) -> LossOutput:
    """NCA, K-response form: q = softmax(ψ/temperature), r = β·ρ,
    L = −Σ_i q_i·log σ(r_i) − (1/K)·Σ_i log σ(−r_i). For a pair with hard labels:
    −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l). Unlike DPO it pushes the absolute reward of the
    chosen response up (it keeps the chosen likelihood from falling). Official recipe β = 0.01.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[2.0, 6.0, -4.0]]), ref_logps=torch.zeros(1, 3),
        ...                lengths=torch.tensor([[4.0, 6.0, 5.0]]), scores=torch.tensor([[0.8, 0.5, 0.2]]))
        >>> round(LOSSES["nca"](batch).loss.mean().item(), 4)
        1.381
    """
    check_beta(beta)
    check(temperature > 0, "temperature", temperature, "must be > 0")
    rewards = beta * batch.log_ratios()
    targets = _soft_targets(batch, temperature)
    n_valid = batch.mask.sum(1).to(rewards.dtype)
    attract = -(targets * torch.where(batch.mask, F.logsigmoid(rewards), 0.0)).sum(1)
    repel = -torch.where(batch.mask, F.logsigmoid(-rewards), 0.0).sum(1) / n_valid
    return outputs(attract + repel, rewards, batch)
