"""Group-relative RL objectives: a prompt's K sampled answers are its group (a list, B prompts ×
K answers), their rewards its `scores`; per-token log-probs under the policy (`token_logps`),
the policy that sampled (`old_token_logps`; the policy's own, detached, on fresh samples) and,
with a KL term, the reference (`ref_token_logps`).

Aggregation, as the per-example losses the trainer averages over prompts: each objective spreads
its batch-level normalizer over the prompts, so that the mean over the prompts of a batch is the
paper's (and TRL's) loss over that batch."""

from __future__ import annotations

import torch

from prefopt.losses.base import ListBatch, LossOutput, check, register_loss

AGGREGATIONS = ("sequence", "token", "constant")
SAMPLER_CORRECTIONS = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def sampler_correction(
    old_token_logps: torch.Tensor,
    sampler_token_logps: torch.Tensor,
    token_mask: torch.Tensor,
    mode: str = "sequence_mask",
    clip_max: float | None = 3.0,
    clip_min: float | None = None,
) -> torch.Tensor:
    """[B, K, T] importance weights for answers another engine sampled (vLLM): its log-probs are
    not the trainer's, so the policy gradient is off-policy by the ratio π_old / π_sampler
    (truncated importance sampling, Yao et al. 2025, "Your Efficient RL Framework Secretly Brings
    You Off-Policy RL Training"). `token_*`: the ratio of each token; `sequence_*`: the product
    over the answer's tokens, for all of them. `*_truncate` clamps it to [clip_min, clip_max];
    `*_mask` sets it to 0 outside (TRL's `vllm_importance_sampling_mode`). Without gradient."""
    check(mode in SAMPLER_CORRECTIONS, "vllm_importance_sampling", mode,
          "is token_truncate, token_mask, sequence_truncate or sequence_mask")  # fmt: skip
    log_ratio = (old_token_logps.float() - sampler_token_logps.float()) * token_mask
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True)
    ratio = log_ratio.detach().exp()
    if mode.endswith("truncate"):
        ratio = ratio.clamp(min=clip_min, max=clip_max)
    else:
        low = -float("inf") if clip_min is None else clip_min
        high = float("inf") if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    return ratio.expand_as(old_token_logps)


def group_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    baseline: str = "mean",
    scale: str = "group",
    epsilon: float = 1e-4,
) -> torch.Tensor:
    """[B, K] advantages of K answers to each of B prompts: A_i = (r_i − b_i) / (s + ε).

    `baseline` "mean": b = the group's mean reward (GRPO, Shao et al. 2024, Eq. 3);
    "leave_one_out": b = the mean of the group's other answers (RLOO, Ahmadian et al. 2024, Eq. 6).
    `scale` "group": s = the group's standard deviation (Bessel-corrected, as TRL); "batch": of
    every reward of the batch (REINFORCE++-baseline, Hu et al. 2025; TRL's scale_rewards="batch");
    "none": no division (Dr. GRPO, Liu et al. 2025). A group of one answer, or of equal rewards,
    has advantage 0. Masked answers (ragged groups) get 0 and count nowhere.

    Example:
        >>> import torch
        >>> from prefopt.losses.rl import group_advantages
        >>> rewards, mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]]), torch.ones(1, 4, dtype=torch.bool)
        >>> group_advantages(rewards, mask, scale="none").tolist()
        [[0.5, -0.5, -0.5, 0.5]]
    """
    check(baseline in ("mean", "leave_one_out"), "baseline", baseline, "is mean or leave_one_out")
    check(scale in ("group", "batch", "none"), "scale", scale, "is group, batch or none")
    rewards, weights = rewards.float(), mask.float()
    count = weights.sum(-1, keepdim=True)
    total = (rewards * weights).sum(-1, keepdim=True)
    mean = total / count.clamp(min=1)
    if baseline == "mean":
        advantages = rewards - mean
    else:
        advantages = rewards - (total - rewards) / (count - 1).clamp(min=1)
        advantages = torch.where(count > 1, advantages, torch.zeros_like(advantages))
    if scale == "group":
        variance = ((rewards - mean) ** 2 * weights).sum(-1, keepdim=True) / (count - 1).clamp(
            min=1
        )
        advantages = advantages / (variance.sqrt() + epsilon)
    elif scale == "batch":
        n = weights.sum()
        batch_mean = (rewards * weights).sum() / n.clamp(min=1)
        variance = ((rewards - batch_mean) ** 2 * weights).sum() / (n - 1).clamp(min=1)
        advantages = advantages / (variance.sqrt() + epsilon)
    return advantages * weights


def unlikeliness(
    rewards: torch.Tensor, mean_old_logps: torch.Tensor, mask: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Rewards reshaped so that a group's unlikely right answers count more ("Rewarding the
    Unlikely", He et al. 2025, Sec. 4): r̃_i = r_i·(1 − λ·rank_i / K), rank 0 the answer least
    likely under the sampling policy (mean token log-prob), K the group's size, λ = `penalty`
    (0.25 in the authors' code)."""
    check(0 <= penalty <= 1, "unlikeliness", penalty, "is in [0, 1]")
    keyed = mean_old_logps.masked_fill(~mask, float("inf"))  # masked answers rank last
    ranks = keyed.argsort(dim=-1, stable=True).argsort(dim=-1).float()
    size = mask.float().sum(-1, keepdim=True).clamp(min=1)
    return rewards * (1 - penalty * ranks / size)


# each objective's advantage estimator: (baseline, scale); None: its `scale_rewards` parameter
ESTIMATORS = {
    "grpo": ("mean", None),
    "rloo": ("leave_one_out", "none"),
    "reinforce_pp": ("mean", "batch"),
}


def advantages_for(
    name: str,
    params: dict,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    mean_old_logps: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The advantages objective `name` (with `params`) computes from `rewards` [B, K]: a trainer
    computes them once over a whole step and hands them to every minibatch. None for an objective
    that reads rewards itself (disco). `mean_old_logps` [B, K]: for the unlikeliness reward."""
    if name not in ESTIMATORS:
        return None
    baseline, scale = ESTIMATORS[name]
    shaping = params.get("unlikeliness", 0.0)
    if shaping:
        rewards = unlikeliness(rewards, mean_old_logps, mask, shaping)
    scale = scale or params.get("scale_rewards", "group")
    return group_advantages(rewards, mask, baseline=baseline, scale=scale)


def _advantages(batch: ListBatch, name: str, params: dict) -> torch.Tensor:
    """The batch's advantages: given, or from its rewards (`scores`)."""
    if batch.advantages is not None:
        return batch.advantages
    mean_old = None
    if params.get("unlikeliness"):
        tokens, token_mask = batch.tokens()
        mean_old = (batch.old_tokens() * token_mask).sum(-1) / token_mask.sum(-1).clamp(min=1)
    return advantages_for(name, params, batch.scores, batch.mask, mean_old)


def _aggregate(per_token: torch.Tensor, batch: ListBatch, aggregation: str,
               max_length: int | None) -> torch.Tensor:  # fmt: skip
    """[B] per-prompt losses whose mean over the B prompts is the batch loss of `aggregation`:
    "sequence" (GRPO: a mean over each answer's tokens, then over answers), "token" (DAPO, Yu et
    al. 2025, Eq. 8: one mean over every token of the batch), "constant" (Dr. GRPO, Liu et al.
    2025: the sum over tokens divided by answers × `max_length`). The denominators count the
    whole batch, across processes when it is sharded (`ListBatch.across`)."""
    check(aggregation in AGGREGATIONS, "aggregation", aggregation, "is sequence, token or constant")
    prompts = per_token.shape[0]
    weights = batch.token_mask.float()
    sums = (per_token * weights).sum(-1)  # [B, K] per answer
    answers = batch.total(batch.mask.float().sum()).clamp(min=1)
    if aggregation == "sequence":
        per_answer = sums / weights.sum(-1).clamp(min=1)
        return prompts * per_answer.sum(-1) / answers
    if aggregation == "token":
        return prompts * sums.sum(-1) / batch.total(weights.sum()).clamp(min=1)
    length = max_length or per_token.shape[-1]
    check(length >= 1, "max_completion_length", length, "must be >= 1")
    return prompts * sums.sum(-1) / (answers * length)


def _clipped_surrogate(
    batch: ListBatch,
    advantages: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
    importance_sampling: str,
    aggregation: str,
    max_completion_length: int | None,
    beta: float,
    kl_importance_weight: bool = True,
) -> LossOutput:
    """−min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·KL per token, aggregated (PPO's clipped
    objective with group-relative advantages; GRPO, Shao et al. 2024, Eq. 3). The KL estimate is
    of samples drawn from π_old: `kl_importance_weight` weights it by ρ, so that it estimates
    KL(π_θ ‖ π_ref) and its gradient is unbiased (as TRL's default `use_bias_correction_kl`)."""
    check(0 <= epsilon_low < 1, "epsilon_low", epsilon_low, "is in [0, 1)")
    check(epsilon_high >= 0, "epsilon_high", epsilon_high, "must be >= 0")
    check(beta >= 0, "beta", beta, "must be >= 0")
    check(importance_sampling in ("token", "sequence"), "importance_sampling",
          importance_sampling, "is token or sequence")  # fmt: skip
    tokens, token_mask = batch.tokens()
    weights = token_mask.float()
    log_ratio = tokens - batch.old_tokens()
    if importance_sampling == "sequence":  # GSPO (Zheng et al. 2025, Eq. 7): the mean token ratio
        log_ratio = (log_ratio * weights).sum(-1, keepdim=True) / weights.sum(
            -1, keepdim=True
        ).clamp(min=1)
    ratio = log_ratio.exp()
    gain = advantages.unsqueeze(-1)
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * gain, clipped * gain).expand_as(tokens)
    if batch.sampler_weights is not None:  # sampled by another engine: off-policy by this much
        per_token = per_token * batch.sampler_weights
    metrics = {}
    if beta:
        ref_minus = batch.ref_tokens() - tokens  # k3 estimator of KL(π_θ ‖ π_ref) (Schulman 2020)
        kl = ref_minus.exp() - ref_minus - 1
        if kl_importance_weight:
            kl = kl * ratio
        per_token = per_token + beta * kl
        metrics["kl"] = _token_mean(kl, weights)
    loss = _aggregate(per_token, batch, aggregation, max_completion_length)
    # clipped where it changes the loss: below the region for A < 0, above it for A > 0
    region = ((ratio < 1 - epsilon_low) & (gain < 0)) | ((ratio > 1 + epsilon_high) & (gain > 0))
    region = region.float().expand_as(tokens)
    metrics |= _group_metrics(batch) | {"clip_ratio": _token_mean(region, weights)}
    return LossOutput(loss=loss, metrics=metrics)


def _token_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B] the mean of a per-token value over each prompt's answers' tokens (detached)."""
    total = (values * weights).flatten(1).sum(-1)
    return (total / weights.flatten(1).sum(-1).clamp(min=1)).detach()


def _group_metrics(batch: ListBatch) -> dict[str, torch.Tensor]:
    """Per prompt: the mean reward, its spread, and whether the group carries no signal."""
    weights = batch.mask.float()
    count = weights.sum(-1).clamp(min=1)
    mean = (batch.scores * weights).sum(-1) / count
    spread = ((batch.scores - mean.unsqueeze(-1)) ** 2 * weights).sum(-1) / (count - 1).clamp(min=1)
    std = spread.sqrt()
    return {"reward": mean.detach(), "reward_std": std.detach(), "zero_std": (std == 0).float()}


def _reinforce(batch, name, epsilon_low, epsilon_high, aggregation, max_completion_length,
               beta) -> LossOutput:  # fmt: skip
    """The clipped surrogate with token ratios and the advantages of objective `name`."""
    return _clipped_surrogate(
        batch,
        _advantages(batch, name, {}),
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        importance_sampling="token",
        aggregation=aggregation,
        max_completion_length=max_completion_length,
        beta=beta,
    )


_SURROGATE = "−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·KL₃"


@register_loss(
    "grpo",
    formula=_SURROGATE + ",  A = (r − mean_group r)/(std + 1e-4)",
    paper="Shao et al. 2024 (DeepSeekMath), arXiv 2402.03300, Eq. 3; GSPO: Zheng et al. 2025, "
    "arXiv 2507.18071, Eq. 7; DAPO: Yu et al. 2025, arXiv 2503.14476, Eq. 8; Dr. GRPO: Liu et al. "
    "2025, arXiv 2503.20783",
    family="rl",
    needs=("tokens",),
    needs_if={"ref_tokens": "beta"},
)
def grpo(
    batch: ListBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    importance_sampling: str = "token",
    aggregation: str = "sequence",
    max_completion_length: int | None = None,
    scale_rewards: str = "group",
    beta: float = 0.0,
    kl_importance_weight: bool = True,
    unlikeliness: float = 0.0,
) -> LossOutput:
    """GRPO: the clipped surrogate with group-relative advantages A_i = (r_i − mean r)/(s + 1e-4),
    every token of answer i weighted by A_i; ρ = π_θ/π_old per token.

    Its successors are settings: `importance_sampling="sequence"` is GSPO (one length-normalized
    ratio per answer); `aggregation="token"` with `epsilon_high=0.28` is DAPO's token-level loss
    and clip-higher (TRL's default `loss_type="dapo"` aggregates so); `aggregation="constant"`
    with `scale_rewards="none"` is Dr. GRPO (the sum over tokens divided by answers ×
    `max_completion_length`, the batch's longest when not given). `beta` > 0 adds the k3 estimate
    of KL(π_θ ‖ π_ref) per token (default 0, as TRL: no reference pass), weighted by ρ
    (`kl_importance_weight`, as TRL's default `use_bias_correction_kl`: the samples are π_old's). `unlikeliness` λ > 0
    reshapes rewards so a group's unlikely right answers count more (He et al. 2025). Rewards are
    `scores`; `advantages`, when the batch carries them, are used as given (the trainer computes
    them over a whole step).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.tensor([[[-1.0, -2.0], [-0.5, -1.5]]])  # 1 prompt, 2 answers, 2 tokens
        >>> batch = ListBatch(logps=tokens.sum(-1), scores=torch.tensor([[1.0, 0.0]]),
        ...                   token_logps=tokens, old_token_logps=tokens - 0.3)
        >>> round(LOSSES["grpo"](batch).loss.item(), 4)
        0.053
    """
    advantages = _advantages(
        batch, "grpo", {"scale_rewards": scale_rewards, "unlikeliness": unlikeliness}
    )
    return _clipped_surrogate(
        batch,
        advantages,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        importance_sampling=importance_sampling,
        aggregation=aggregation,
        max_completion_length=max_completion_length,
        beta=beta,
        kl_importance_weight=kl_importance_weight,
    )


@register_loss(
    "rloo",
    formula=_SURROGATE + ",  A_i = r_i − mean_{j≠i} r_j",
    paper="Ahmadian et al. 2024 (Back to Basics: REINFORCE), arXiv 2402.14740, Eq. 6",
    family="rl",
    needs=("tokens",),
    needs_if={"ref_tokens": "beta"},
)
def rloo(
    batch: ListBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    aggregation: str = "sequence",
    max_completion_length: int | None = None,
    beta: float = 0.0,
) -> LossOutput:
    """REINFORCE Leave-One-Out: each answer's baseline is the mean reward of its group's other
    answers, A_i = r_i − (Σ_{j≠i} r_j)/(K − 1), unscaled; the same clipped surrogate as GRPO (with
    one pass over fresh samples ρ = 1 and it is REINFORCE with that baseline). Aggregations as
    GRPO's.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.tensor([[[-1.0, -2.0], [-0.5, -1.5]]])
        >>> batch = ListBatch(logps=tokens.sum(-1), scores=torch.tensor([[1.0, 0.0]]), token_logps=tokens)
        >>> round(LOSSES["rloo"](batch).loss.item(), 4)
        0.0
    """
    return _reinforce(
        batch, "rloo", epsilon_low, epsilon_high, aggregation, max_completion_length, beta
    )


@register_loss(
    "reinforce_pp",
    formula=_SURROGATE + ",  A_i = (r_i − mean_group r)/std_batch(A)",
    paper="Hu et al. 2025 (REINFORCE++), arXiv 2501.03262, Sec. 3 (the -baseline variant)",
    family="rl",
    needs=("tokens",),
    needs_if={"ref_tokens": "beta"},
)
def reinforce_pp(
    batch: ListBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    aggregation: str = "token",
    max_completion_length: int | None = None,
    beta: float = 0.0,
) -> LossOutput:
    """REINFORCE++-baseline: the group's mean reward removed, then every advantage divided by the
    standard deviation over the whole batch (not the group's, which over-weights groups whose
    answers barely differ); the clipped surrogate, aggregated over the batch's tokens (or as
    GRPO's other aggregations).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.tensor([[[-1.0, -2.0], [-0.5, -1.5]]])
        >>> batch = ListBatch(logps=tokens.sum(-1), scores=torch.tensor([[1.0, 0.0]]), token_logps=tokens)
        >>> round(LOSSES["reinforce_pp"](batch).loss.item(), 4)
        0.0
    """
    return _reinforce(
        batch, "reinforce_pp", epsilon_low, epsilon_high, aggregation, max_completion_length, beta
    )


@register_loss(
    "disco",
    formula="−[mean_{o⁺} s(o⁺) − τ·log Σ_{o⁻} exp(s(o⁻)/τ)] + sg(β·[KL − δ]₊)·KL,  s = mean token log π",
    paper="Li et al. 2025 (DisCO: Discriminative Constrained Optimization), arXiv 2505.12366, "
    "Eq. 11 and 13",
    family="rl",
    needs=("tokens",),
)
def disco(
    batch: ListBatch,
    *,
    tau: float = 10.0,
    delta: float = 1e-4,
    kl_coef: float = 1e3,
    threshold: float = 0.5,
) -> LossOutput:
    """DisCO: a discriminative objective on binary rewards, no clipping and no advantage: each
    answer's score s(o) = its mean token log-prob; per prompt, J = mean over the right answers
    (reward > `threshold`) of s − τ·log Σ over the wrong ones of exp(s/τ) (the log-sum-exp form
    that pushes hardest on the likeliest wrong answers); only groups with both count. The trust
    region KL(π_old ‖ π_θ) ≤ δ (the k3 estimate, a mean over the batch's tokens) is a squared
    hinge whose gradient is β·[KL − δ]₊·∇KL. Defaults are the authors' recipe: τ = 10,
    δ = 1e-4, β = 1e3.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.tensor([[[-1.0, -2.0], [-0.5, -1.5]]])
        >>> batch = ListBatch(logps=tokens.sum(-1), scores=torch.tensor([[1.0, 0.0]]), token_logps=tokens)
        >>> round(LOSSES["disco"](batch, tau=1.0).loss.item(), 4)
        0.5
    """
    check(tau > 0, "tau", tau, "must be > 0")
    check(delta >= 0 and kl_coef >= 0, "delta, kl_coef", (delta, kl_coef), "must be >= 0")
    tokens, token_mask = batch.tokens()
    weights = token_mask.float()
    scores = (tokens * weights).sum(-1) / weights.sum(-1).clamp(min=1)  # [B, K]
    right = batch.mask & (batch.scores > threshold)
    wrong = batch.mask & ~(batch.scores > threshold)
    informative = right.any(-1) & wrong.any(-1)
    positive = (scores * right).sum(-1) / right.sum(-1).clamp(min=1)
    negative = tau * torch.logsumexp((scores / tau).masked_fill(~wrong, float("-inf")), dim=-1)
    objective = torch.where(informative, positive - negative.nan_to_num(0.0, neginf=0.0), 0.0)
    prompts = scores.shape[0]
    groups = batch.total(informative.float().sum()).clamp(min=1)
    # the mean over the prompts is the mean over the (whole batch's) informative groups
    loss = -prompts * objective / groups
    old_minus = batch.old_tokens() - tokens
    kl_sum = ((old_minus.exp() - old_minus - 1) * weights).sum()
    tokens_total = batch.total(weights.sum()).clamp(min=1)
    kl = kl_sum / tokens_total  # this process's share of the batch's mean KL
    hinge = kl_coef * (batch.total(kl_sum) / tokens_total - delta).clamp(min=0)
    loss = loss + hinge * kl
    metrics = _group_metrics(batch) | {
        "kl_old": kl.detach().expand(prompts),
        "informative": informative.float(),
    }
    return LossOutput(loss=loss, metrics=metrics)
