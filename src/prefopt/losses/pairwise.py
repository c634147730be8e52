"""Pairwise objectives of the DPO family. Each is written for one (better, worse) pair; given a
list of K > 2 it applies to every pair with a strictly higher score and averages them.
"""

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
    chosen_nll,
    outputs,
    register_loss,
    soft_label_logistic,
)


def _margins(batch: ListBatch, rewards: torch.Tensor) -> torch.Tensor:
    better, worse = batch.pairs.take(rewards)
    return better - worse


def _pairwise(
    batch: ListBatch, per_pair: torch.Tensor, rewards: torch.Tensor, **extra
) -> LossOutput:
    return outputs(batch.pairs.mean(per_pair), rewards, batch, **extra)


@register_loss(
    "dpo",
    formula="−log σ(β·h − m·(s_w − s_l)),  h = ρ_w − ρ_l",
    paper="Rafailov et al. 2023, arXiv 2305.18290, Eq. 7",
    family="pairwise",
    needs=("ref",),
)
def dpo(
    batch: ListBatch, *, beta: float = 0.1, margin: float = 0.0, length_normalize: bool = False
) -> LossOutput:
    """DPO: L = −log σ(β·h), h = ρ(y_w) − ρ(y_l), ρ = S_θ − S_ref on summed log-probs.

    Implicit reward r̂(y) = β·ρ(y). Default β = 0.1 (TRL); the paper used 0.1 for dialogue and
    0.5 for summarisation. `margin` m > 0 asks a pair to be separated by m times its score gap,
    L = −log σ(β·h − m·(s_w − s_l)): the margin of Llama 2's reward model (Touvron et al. 2023,
    arXiv 2307.09288, Eq. 2), and DPO with an offset (Amini et al. 2024, arXiv 2402.10571). On
    rewards with β = 1 and no reference, this is the Bradley–Terry reward model's loss.
    `length_normalize=True` divides each log-ratio by its completion's token count, r̂ = β·ρ/|y|
    (TRL's `loss_type="sigmoid_norm"`; lengths needed only then).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["dpo"](batch).loss.mean().item(), 4)
        0.5981
    """
    check_beta(beta)
    check(math.isfinite(margin) and margin >= 0, "margin", margin, "must be a finite number >= 0")
    rho = batch.log_ratios()
    rewards = beta * (rho / batch.safe_lengths() if length_normalize else rho)
    z = _margins(batch, rewards)
    if margin:
        z = z - margin * _margins(batch, batch.scores)
    return _pairwise(batch, -F.logsigmoid(z), rewards)


def _prefix_sums(tokens: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, K, T] per-token values, [B, P] items and token counts -> [B, P]: each item's sum over
    its first `lengths` tokens."""
    # [B, K, T + 1]: the sum of the first n tokens at n
    cumulative = F.pad(tokens.cumsum(-1), (1, 0))
    width = cumulative.shape[-1]
    index = items * width + lengths.long().clamp(0, width - 1)
    return cumulative.flatten(1).gather(1, index)


@register_loss(
    "ld_dpo",
    formula="DPO on S̃ = S_{≤ℓ} + α·S_{>ℓ},  ℓ = min(|y_w|, |y_l|), policy and reference alike",
    paper="Liu et al. 2024 (LD-DPO), arXiv 2409.06411",
    family="pairwise",
    needs=("ref", "lengths", "tokens", "ref_tokens"),
)
def ld_dpo(batch: ListBatch, *, beta: float = 0.1, alpha: float = 0.5) -> LossOutput:
    """Length-desensitized DPO: DPO's summed log-probs reward the longer answer's extra tokens;
    LD-DPO keeps the tokens both answers of a pair have in number, ℓ = min(|y_w|, |y_l|), and
    weighs the longer one's tail by α: S̃(y) = Σ_{t≤ℓ} log π(y_t) + α·Σ_{t>ℓ} log π(y_t), for the
    policy and the reference, then L = −log σ(β·(ρ̃_w − ρ̃_l)) with ρ̃ = S̃_θ − S̃_ref. α = 1 is
    DPO; the paper tunes α per model and TRL's `ld_alpha` has no default, so 0.5 is a midpoint,
    not a recommendation. Lists: each pair has its own ℓ. Implicit rewards in the metrics: DPO's
    β·ρ.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> tokens = torch.tensor([[[-1.0, -2, -3, 0, 0], [-0.5, -1, -1, -2, -1]]])
        >>> ref = torch.tensor([[[-1.5, -2, -2, 0, 0], [-1.0, -1, -1, -1, -1]]])
        >>> mask = torch.tensor([[[True] * 3 + [False] * 2, [True] * 5]])
        >>> batch = ListBatch(logps=tokens.sum(-1), ref_logps=ref.sum(-1), token_logps=tokens, token_mask=mask,
        ...                ref_token_logps=ref)
        >>> round(LOSSES["ld_dpo"](batch).loss.mean().item(), 4)
        0.7185
    """
    check_beta(beta)
    check(0 <= alpha <= 1, "alpha", alpha, "must be in [0, 1]")
    pairs = batch.pairs
    tokens, _ = batch.tokens()
    ref_tokens = batch.ref_tokens()
    shared = torch.minimum(*pairs.take(batch.lengths))

    def desensitized(
        values: torch.Tensor, summed: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        head = _prefix_sums(values, items, shared)
        return head + alpha * (summed.gather(1, items) - head)

    rho = {
        side: desensitized(tokens, batch.logps, items)
        - desensitized(ref_tokens, batch.ref_logps, items)
        for side, items in (("w", pairs.better), ("l", pairs.worse))
    }
    return _pairwise(batch, -F.logsigmoid(beta * (rho["w"] - rho["l"])), beta * batch.log_ratios())


@register_loss(
    "wpo",
    formula="w(y_w)·w(y_l)·(−log σ(βh)),  log w(y) = mean_t [log π_θ(y_t) − log Σ_v π_θ(v)²]",
    paper="Zhou et al. 2024 (WPO), arXiv 2406.11827, Eq. 2",
    family="pairwise",
    needs=("ref", "sampling_weights"),
)
def wpo(batch: ListBatch, *, beta: float = 0.1) -> LossOutput:
    """Weighted preference optimization: off-policy pairs (answers the policy itself would rarely
    write) count less. Each answer's weight is the policy's probability of it, per token, relative
    to how peaked the policy is at that token: w(y) = exp(mean_t [log π_θ(y_t) − log Σ_v π_θ(v)²])
    (the paper's weight with its alignment to the policy's own sampling), taken as a constant, and
    a pair's DPO loss is multiplied by w(y_w)·w(y_l). As TRL's `use_weighting`, the weighted
    losses are averaged, not renormalised by the weights' sum. β = 0.1.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[-10.0, -12.0]]), ref_logps=torch.tensor([[-11.0, -11.0]]),
        ...                sampling_log_weights=torch.tensor([[-0.5, -1.5]]))
        >>> round(LOSSES["wpo"](batch).loss.mean().item(), 4)
        0.0809
    """
    check_beta(beta)
    rewards = beta * batch.log_ratios()
    weight_w, weight_l = batch.pairs.take(batch.sampling_weights())
    per_pair = weight_w * weight_l * -F.logsigmoid(_margins(batch, rewards))
    return _pairwise(
        batch, per_pair, rewards, sampling_weight=batch.pairs.metric_mean(weight_w * weight_l)
    )


@register_loss(
    "inpo",
    formula="(h − η/2)²,  h = Δ_θ − ητ·Δ_ref − (1 − ητ)·Δ_t,  Δ = S(y_w) − S(y_l)",
    paper="Zhang et al. 2024 (INPO), arXiv 2407.00617",
    family="pairwise",
    needs=("ref", "anchor"),
)
def inpo(batch: ListBatch, *, eta: float | None = None, tau: float | None = None) -> LossOutput:
    """Iterative Nash policy optimization, one iteration of online mirror descent toward the Nash
    policy of a general preference: π_{t+1} ∝ π_t^(1−ητ)·π_ref^(ητ)·exp(η·P(y ≻ π_t)), fitted by a
    squared loss on the oracle's pairs of on-policy samples, h = Δ_θ − ητ·Δ_ref − (1 − ητ)·Δ_t with
    Δ the summed log-prob gap of the pair under the policy, the fixed reference π_ref (anchor_logps,
    `anchor_model`) and the previous iterate π_t (ref_logps: the loop's reference under `training:
    continue`), and L = (h − η/2)². η (step size) and τ (KL strength toward π_ref) have no
    defaults: the paper's were not verified, so both must be given. Implicit rewards: ρ = S_θ − S_t.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch(logps=torch.tensor([[-10.0, -12.0]]), ref_logps=torch.tensor([[-10.5, -11.5]]),
        ...                anchor_logps=torch.tensor([[-11.0, -11.0]]))
        >>> round(LOSSES["inpo"](batch, eta=1.0, tau=0.1).loss.mean().item(), 4)
        0.36
    """
    check(
        eta is not None and eta > 0,
        "eta",
        eta,
        "must be given and > 0 (no default: the paper's was not verified)",
    )
    check(
        tau is not None and tau >= 0,
        "tau",
        tau,
        "must be given and >= 0 (no default: the paper's was not verified)",
    )
    check(
        eta * tau <= 1,
        "eta·tau",
        eta * tau,
        "must be <= 1 (the previous iterate's weight is 1 − ητ)",
    )
    mix, rho = eta * tau, batch.log_ratios()
    h = (
        _margins(batch, batch.logps)
        - mix * _margins(batch, batch.anchor())
        - (1 - mix) * _margins(batch, batch.ref_logps)
    )
    return _pairwise(batch, (h - eta / 2) ** 2, rho)


@register_loss(
    "cdpo",
    formula="−(1−ε)·log σ(βh) − ε·log σ(−βh)",
    paper="Mitchell 2023, 'A note on DPO with noisy preferences'",
    family="pairwise",
    needs=("ref",),
)
def cdpo(batch: ListBatch, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Conservative DPO: labels flipped with probability ε, soft-label cross-entropy
    L = −(1−ε) log σ(βh) − ε log σ(−βh). Minimum at βh = log((1−ε)/ε). ε = 0 is DPO.
    Default ε = 0.1 (the typical value; TRL's `label_smoothing`).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["cdpo"](batch).loss.mean().item(), 4)
        0.6181
    """
    check_beta(beta)
    check(0 <= label_smoothing < 0.5, "label_smoothing", label_smoothing, "must be in [0, 0.5)")
    rewards = beta * batch.log_ratios()
    z = _margins(batch, rewards)
    return _pairwise(batch, soft_label_logistic(z, label_smoothing), rewards)


@register_loss(
    "robust",
    formula="[−(1−ε)·log σ(βh) + ε·log σ(−βh)] / (1−2ε)",
    paper="Chowdhury et al. 2024, arXiv 2403.00409, Eq. 8",
    family="pairwise",
    needs=("ref",),
)
def robust(batch: ListBatch, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Robust DPO: unbiased loss under label-flip rate ε < 1/2,
    L = [−(1−ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε). Can be negative (unbounded below).
    Default ε = 0.1 (TRL docs).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["robust"](batch).loss.mean().item(), 4)
        0.5731
    """
    check_beta(beta)
    check(0 <= label_smoothing < 0.5, "label_smoothing", label_smoothing, "must be in [0, 0.5)")
    rewards = beta * batch.log_ratios()
    z = _margins(batch, rewards)
    eps = label_smoothing
    per_pair = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return _pairwise(batch, per_pair, rewards)


@register_loss(
    "ipo",
    formula="(h − 1/(2τ))²",
    paper="Azar et al. 2023, arXiv 2310.12036, Eq. 17",
    family="pairwise",
    needs=("ref", "lengths"),
)
def ipo(batch: ListBatch, *, beta: float = 0.1, length_normalize: bool = False) -> LossOutput:
    """IPO: L = (h − 1/(2τ))² with τ = beta (default 0.1, target margin 5).

    Paper form (default) uses summed log-ratios. `length_normalize=True` is TRL's form:
    h = ρ_w/|y_w| − ρ_l/|y_l| (lengths needed only then).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["ipo"](batch).loss.mean().item(), 4)
        9.0
    """
    check_beta(beta)
    rho = batch.log_ratios()
    margin_source = rho / batch.safe_lengths() if length_normalize else rho
    per_pair = (_margins(batch, margin_source) - 1 / (2 * beta)) ** 2
    return _pairwise(batch, per_pair, beta * rho)


@register_loss(
    "hinge",
    formula="max(0, 1 − βh)",
    paper="Liu et al. 2023 (RSO), arXiv 2309.06657",
    family="pairwise",
    needs=("ref",),
)
def hinge(batch: ListBatch, *, beta: float = 0.1) -> LossOutput:
    """Normalised-likelihood hinge (RSO; TRL's `hinge`): L = max(0, 1 − βh), so 1/β acts
    as the margin. Zero gradient once βh ≥ 1.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["hinge"](batch).loss.mean().item(), 4)
        0.8
    """
    check_beta(beta)
    rewards = beta * batch.log_ratios()
    return _pairwise(batch, F.relu(1 - _margins(batch, rewards)), rewards)


@register_loss(
    "slic",
    formula="max(0, δ − S_w + S_l) − λ·S_w",
    paper="Zhao et al. 2023 (SLiC-HF), arXiv 2305.10425",
    family="pairwise",
)
def slic(batch: ListBatch, *, delta: float = 1.0, regularization: float = 0.0) -> LossOutput:
    """SLiC-HF calibration: L = max(0, δ − S_θ(y_w) + S_θ(y_l)) − λ·S_θ(y_w), reference-free.
    The regulariser target is the chosen response. The paper's δ and λ were not verified:
    δ = 1, λ = 0 (calibration term only) are configuration, not paper defaults.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["slic"](batch, delta=1.0).loss.mean().item(), 4)
        0.0
    """
    check(delta > 0, "delta", delta, "must be > 0")
    check(regularization >= 0, "regularization", regularization, "must be >= 0")
    logps = batch.logps
    better, worse = batch.pairs.take(logps)
    per_pair = F.relu(delta - better + worse) - regularization * better
    return _pairwise(batch, per_pair, logps)


@register_loss(
    "rpo",
    formula="−log σ(βh) + η·β·NLL(y_w)",
    paper="Liu et al. 2024 (RPO), arXiv 2405.16436",
    family="pairwise",
    needs=("ref", "lengths"),
)
def rpo(batch: ListBatch, *, beta: float = 0.1, eta: float = 0.005, nll: str = "sum") -> LossOutput:
    """RPO, DPO + SFT on the chosen response, Liu et al.:
    nll="sum" (main paper): L = L_DPO + η·β·(−S_θ(y_w)).
    nll="mean" (App. F, OpenRLHF): L = L_DPO + η·(−A_θ(y_w)), not multiplied by β.
    Official recipes: zephyr-7b-beta β=0.01, η=0.005; OpenRLHF mean form β=0.5, η=0.2.
    TRL's `rpo_alpha` (Pang et al.) is the mixture {"dpo": 1, "sft": α} with sft's
    nll_reduction="tokens" instead.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["rpo"](batch).loss.mean().item(), 4)
        0.6031
    """
    check_beta(beta)
    check(eta >= 0, "eta", eta, "must be >= 0")
    check_choice("nll", nll, ("sum", "mean"))
    rewards = beta * batch.log_ratios()
    chosen = batch.pairs.take(batch.logps)[0]
    if nll == "sum":
        nll_term = eta * beta * -chosen
    else:
        nll_term = eta * -batch.pairs.take(batch.avg_logps())[0]
    return _pairwise(batch, -F.logsigmoid(_margins(batch, rewards)) + nll_term, rewards)


_EXP_CAP = 50.0  # exponents are capped here (e^50 ≈ 5e21): past it the loss saturates instead of overflowing


def _f_divergence_derivative(rho: torch.Tensor, divergence: str, alpha: float) -> torch.Tensor:
    """f′(u) at u = π/π_ref = e^ρ, up to a constant (which cancels in the margin)."""
    if divergence == "reverse_kl":  # f(u) = u log u: f′ = log u + 1
        return rho
    if divergence == "forward_kl":  # f(u) = −log u: f′ = −1/u
        return -torch.exp((-rho).clamp(max=_EXP_CAP))
    if divergence == "js":  # f(u) = u log u − (u + 1) log((u + 1)/2): f′ = log(2u / (1 + u))
        return rho - F.softplus(rho)
    # α-divergence, f(u) = (u^(1−α) − (1 − α)u − α) / (α(α − 1)): f′ = (1 − u^(−α)) / α
    return (1 - torch.exp((-alpha * rho).clamp(max=_EXP_CAP))) / alpha


@register_loss(
    "fdpo",
    formula="−log σ(β·[f′(u_w) − f′(u_l)]),  u = π_θ/π_ref",
    paper="Wang et al. 2023 (f-DPO), arXiv 2309.16240",
    family="pairwise",
    needs=("ref",),
)
def fdpo(
    batch: ListBatch, *, beta: float = 0.1, divergence: str = "reverse_kl", alpha: float = 0.5
) -> LossOutput:
    """DPO under an f-divergence constraint instead of the reverse KL ("Beyond Reverse KL"): the
    implicit reward is r̂ = β·f′(π_θ/π_ref), L = −log σ(r̂_w − r̂_l). divergence: "reverse_kl"
    (f′ = log u: DPO itself), "forward_kl" (f′ = −1/u), "js" (Jensen–Shannon, f′ = log(2u/(1+u))),
    "alpha" (the paper's f′ = (1 − u^−α)/α; α → 0 is the reverse KL, α = 1 the forward KL).
    TRL writes the α-divergence as (t^(a−1) − 1)/(a − 1): its f_alpha_divergence_coef a is
    1 − α here (its default 0.5 is α = 0.5, the default here too). Exponents are capped at 50, so
    extreme log-ratios saturate rather than overflow (TRL caps at 80). β = 0.1 as in TRL.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["fdpo"](batch).loss.mean().item(), 4)
        0.5981
    """
    check_beta(beta)
    check_choice("divergence", divergence, ("reverse_kl", "forward_kl", "js", "alpha"))
    check(alpha > 0, "alpha", alpha, "must be > 0")
    rewards = beta * _f_divergence_derivative(batch.log_ratios(), divergence, alpha)
    return _pairwise(batch, -F.logsigmoid(_margins(batch, rewards)), rewards)


@register_loss(
    "discopop",
    formula="(1−σ(βh/τ))·(−log σ(βh)) + σ(βh/τ)·exp(−βh)",
    paper="Lu et al. 2024 (DiscoPOP), arXiv 2406.08414, Eq. 5",
    family="pairwise",
    needs=("ref",),
)
def discopop(batch: ListBatch, *, beta: float = 0.05, tau: float = 0.05) -> LossOutput:
    """DiscoPOP / log-ratio modulated loss: z = βh, m = σ(z/τ),
    L = (1 − m)·(−log σ(z)) + m·exp(−z), gradients through m. Defaults β = 0.05, τ = 0.05
    (official recipe). The exponential uses z clamped at −50 (its weight m is 0 there).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["discopop"](batch).loss.mean().item(), 4)
        0.8738
    """
    check_beta(beta)
    check(tau > 0, "tau", tau, "must be > 0")
    rewards = beta * batch.log_ratios()
    z = _margins(batch, rewards)
    mix = torch.sigmoid(z / tau)
    per_pair = -(1 - mix) * F.logsigmoid(z) + mix * torch.exp(-z.clamp(min=-50.0))
    return _pairwise(batch, per_pair, rewards)


@register_loss(
    "simpo",
    formula="−log σ(β·(A_w − A_l) − γ)",
    paper="Meng et al. 2024 (SimPO), arXiv 2405.14734, Eq. 6",
    family="pairwise",
    needs=("lengths",),
)
def simpo(
    batch: ListBatch,
    *,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.25,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    nll_reduction: str = "sequence",
    alpha: float = 0.0,
) -> LossOutput:
    """SimPO, reference-free: L = −log σ(β·(A_θ(y_w) − A_θ(y_l)) − γ) with token-averaged
    log-probs A_θ and γ = β·gamma_beta_ratio. Optional cDPO-style label smoothing and
    sft_weight·NLL(y_w), the NLL a token mean per sequence (`nll_reduction="sequence"`) or one
    mean over the batch's chosen tokens (`"tokens"`, TRL's). Defaults from the official config:
    β=2, γ/β=0.25.
    Released settings (β, γ/β, lr): Llama3-Instruct (2.5, 0.55, 1e-6), Mistral-Base (2.0, 0.8, 3e-7).
    `alpha` ≠ 0 is AlphaPO (Gupta et al. 2025, arXiv 2501.03884, Eq. 6): the reward A_θ becomes
    (1 − π(y)^(−α/|y|))/α = (1 − e^(−α·A_θ))/α, which α → 0 returns to A_θ; α > 0 makes the
    reward concave in the likelihood (the paper's settings are around α = 0.25). The exponent is
    capped at 50. TRL: CPOTrainer's `alpha` with loss_type "simpo".

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["simpo"](batch).loss.mean().item(), 4)
        1.7014
    """
    check_beta(beta)
    check(0 <= label_smoothing < 0.5, "label_smoothing", label_smoothing, "must be in [0, 0.5)")
    check(sft_weight >= 0, "sft_weight", sft_weight, "must be >= 0")
    check(math.isfinite(alpha), "alpha", alpha, "must be a finite number")
    avg = batch.avg_logps()
    if alpha:
        avg = (1 - torch.exp((-alpha * avg).clamp(max=_EXP_CAP))) / alpha
    rewards = beta * avg
    z = _margins(batch, rewards) - beta * gamma_beta_ratio
    per_pair = soft_label_logistic(z, label_smoothing) + sft_weight * chosen_nll(
        batch, nll_reduction
    )
    return _pairwise(batch, per_pair, rewards)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 − e^a) for a < 0, stable on both sides of −ln 2; a is clamped to ≤ −1e-6."""
    a = a.clamp(max=-1e-6)
    return torch.where(a < -math.log(2), torch.log1p(-torch.exp(a)), torch.log(-torch.expm1(a)))


def _log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    return avg_logps - log1mexp(avg_logps)


@register_loss(
    "orpo",
    formula="NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l))",
    paper="Hong et al. 2024 (ORPO), arXiv 2403.07691, Eq. 6",
    family="pairwise",
    needs=("lengths",),
    needs_if={"prompt": "nll_prompt"},
)
def orpo(
    batch: ListBatch,
    *,
    odds_weight: float = 0.1,
    nll_reduction: str = "sequence",
    nll_prompt: bool = False,
) -> LossOutput:
    """ORPO, reference-free: with a = A_θ(y), log odds(y) = a − log(1 − e^a),
    L = NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l)). The NLL is completion-only by default
    (prompt tokens are not trained); `nll_prompt=True` adds the prompt's tokens to it, as TRL's
    ORPOTrainer and the authors' code do (the engine then also scores the prompt). `nll_reduction`:
    a token mean per sequence (`sequence`, default) or one mean over the batch's tokens (`tokens`,
    TRL's). λ = odds_weight, default 0.1 (official scripts' --alpha, TRL's ORPOConfig.beta).

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["orpo"](batch).loss.mean().item(), 4)
        2.1042
    """
    check(odds_weight >= 0, "odds_weight", odds_weight, "must be >= 0")
    avg = batch.avg_logps()
    odds_margin = _margins(batch, _log_odds(avg))
    nll = chosen_nll(batch, nll_reduction, with_prompt=nll_prompt)
    odds_loss = -F.logsigmoid(odds_margin)
    return _pairwise(
        batch,
        nll + odds_weight * odds_loss,
        avg,
        log_odds_ratio=batch.pairs.metric_mean(odds_margin),
    )


@register_loss(
    "asft",
    formula="−a_w − log(1 − e^{a_l}) on top of NLL(y_w)",
    paper="Wang et al. 2024 (ASFT), arXiv 2409.10571 — reconstruction",
    family="pairwise",
    needs=("lengths",),
    experimental=True,
)
def asft(batch: ListBatch, *, odds_weight: float = 0.1) -> LossOutput:
    """ASFT, aligned SFT through absolute likelihood (EXPERIMENTAL: a reconstruction, no
    reference code exists). Pointwise, odds-based: with a = A_θ(y),
    L = NLL(y_w) + λ·[−log σ(log odds(y_w)) − log σ(−log odds(y_l))] = −a_w + λ·(−a_w − log(1 − e^{a_l})).
    λ = odds_weight, default 0.1.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["asft"](batch).loss.mean().item(), 4)
        2.2252
    """
    check(odds_weight >= 0, "odds_weight", odds_weight, "must be >= 0")
    avg = batch.avg_logps()
    better, worse = batch.pairs.take(avg)
    alignment = -F.logsigmoid(_log_odds(better)) - F.logsigmoid(-_log_odds(worse))
    return _pairwise(batch, -better + odds_weight * alignment, avg)


@register_loss(
    "exo",
    formula="KL(softmax([βρ_w, βρ_l]) ‖ [1−ε, ε])",
    paper="Ji et al. 2024 (EXO), arXiv 2402.00856, Eq. 16",
    family="pairwise",
    needs=("ref",),
)
def exo(batch: ListBatch, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> LossOutput:
    """EXO, pairwise: with z = βh,
    L = σ(z)·(log σ(z) − log(1−ε)) + σ(−z)·(log σ(−z) − log ε). Minimum 0 at z = log((1−ε)/ε).
    Default ε = 1e-3 (TRL), β = 0.1.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["exo"](batch).loss.mean().item(), 4)
        2.422
    """
    check_beta(beta)
    check(0 < label_smoothing < 1, "label_smoothing", label_smoothing, "must be in (0, 1)")
    rewards = beta * batch.log_ratios()
    z = _margins(batch, rewards)
    eps = label_smoothing
    per_pair = torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return _pairwise(batch, per_pair, rewards)


@register_loss(
    "apo_zero",
    formula="(1 − σ(βρ_w)) + σ(βρ_l)",
    paper="D'Oosterlinck et al. 2024 (APO), arXiv 2408.06266, Eq. 7",
    family="pairwise",
    needs=("ref",),
)
def apo_zero(batch: ListBatch, *, beta: float = 0.1) -> LossOutput:
    """APO-zero, for chosen outputs better than the model's own: raise the chosen
    likelihood, lower the rejected: L = (1 − σ(βρ_w)) + σ(βρ_l). Bounded in [0, 2].

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["apo_zero"](batch).loss.mean().item(), 4)
        0.95
    """
    check_beta(beta)
    rewards = beta * batch.log_ratios()
    better, worse = batch.pairs.take(rewards)
    return _pairwise(batch, (1 - torch.sigmoid(better)) + torch.sigmoid(worse), rewards)


@register_loss(
    "apo_down",
    formula="σ(βρ_w) + (1 − σ(βh))",
    paper="D'Oosterlinck et al. 2024 (APO), arXiv 2408.06266, Eq. 8",
    family="pairwise",
    needs=("ref",),
)
def apo_down(batch: ListBatch, *, beta: float = 0.1) -> LossOutput:
    """APO-down, for chosen outputs worse than the model's own: lower both, the rejected
    more: L = σ(βρ_w) + (1 − σ(β(ρ_w − ρ_l))). Bounded in [0, 2].

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["apo_down"](batch).loss.mean().item(), 4)
        0.9751
    """
    check_beta(beta)
    rewards = beta * batch.log_ratios()
    better, worse = batch.pairs.take(rewards)
    return _pairwise(batch, torch.sigmoid(better) + (1 - torch.sigmoid(better - worse)), rewards)


class RunningMean:
    """Count-weighted running mean of batch means (TRL's RunningMoments: starts at mean 0,
    count 1e-24, so the first update sets it to that batch's mean). Checkpointable."""

    def __init__(self) -> None:
        self.mean, self.count = 0.0, 1e-24

    def update(self, batch_mean: float) -> float:
        self.count += 1
        self.mean += (batch_mean - self.mean) / self.count
        return self.mean

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.count = float(state["mean"]), float(state["count"])


def reward_shift(batch: ListBatch, rewards: torch.Tensor, delta: float | None,
                 running: RunningMean | None) -> float:  # fmt: skip
    """BCO's δ: `delta` if given; else the batch's mean reward over every answer (every process's
    share), folded into the `running` mean when there is one (Jung et al. 2024)."""
    if delta is not None:
        return delta
    valid = rewards.detach()[batch.mask]
    count = torch.tensor(float(valid.numel()), device=valid.device)
    batch_mean = (batch.total(valid.sum()) / batch.total(count).clamp(min=1)).item()
    return running.update(batch_mean) if running is not None else batch_mean


@register_loss(
    "bco_pair",
    formula="−log σ(r_w − δ) − log σ(−(r_l − δ)),  r = βρ",
    paper="Jung et al. 2024 (BCO), arXiv 2404.04656",
    family="pairwise",
    needs=("ref",),
    stateful=True,
)
def bco_pair(
    batch: ListBatch,
    *,
    beta: float = 0.1,
    delta: float | None = None,
    running: RunningMean | None = None,
) -> LossOutput:
    """BCO on pairs: chosen is class 1, rejected class 0, logit r − δ with r = βρ:
    L = −log σ(r_w − δ) − log σ(−(r_l − δ)).
    δ is a reward shift: a fixed `delta` if given (0.0 is TRL HEAD's behaviour); otherwise the
    running mean of batch-mean rewards (paper / BCOTrainer), updated before the loss when the
    trainer passes its `running` state (it does not update in evaluation); with neither, the
    current batch mean.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["bco_pair"](batch).loss.mean().item(), 4)
        1.2888
    """
    check_beta(beta)
    rewards = beta * batch.log_ratios()
    delta = reward_shift(batch, rewards, delta, running)
    better, worse = batch.pairs.take(rewards)
    per_pair = -F.logsigmoid(better - delta) - F.logsigmoid(-(worse - delta))
    return _pairwise(
        batch, per_pair, rewards, reward_shift=torch.full_like(rewards[:, 0], float(delta)).detach()
    )


@register_loss(
    "sppo_hard",
    formula="(ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²",
    paper="Wu et al. 2024 (SPPO), arXiv 2405.00675",
    family="pairwise",
    needs=("ref",),
)
def sppo_hard(batch: ListBatch, *, beta: float = 0.1) -> LossOutput:
    """SPPO with hard labels: regress the winner's log-ratio to +1/(2β) and the
    loser's to −1/(2β): L = (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))².

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> batch = ListBatch.from_pairs(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0], [5.0], [8.0]]))
        >>> round(LOSSES["sppo_hard"](batch).loss.mean().item(), 4)
        32.0
    """
    check_beta(beta)
    rho = batch.log_ratios()
    better, worse = batch.pairs.take(rho)
    target = 1 / (2 * beta)
    return _pairwise(batch, (better - target) ** 2 + (worse + target) ** 2, beta * rho)


def _quantile_margins(
    better: torch.Tensor, worse: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """[B, P] -> [B, P]: sort(better) − sort(worse) over the batch's valid pairs, each difference put
    at the pair that holds that quantile of `better` (0 at invalid pairs). Pairing the i-th smallest
    with the i-th smallest is the one-dimensional optimal transport plan between the two empirical
    distributions (Melnyk et al. 2024, Sec. 3)."""
    order = better[valid].argsort()
    quantiles = better[valid][order] - worse[valid].sort().values
    flat = torch.empty_like(quantiles).index_put((order,), quantiles)
    return torch.zeros_like(better).masked_scatter(valid, flat)


@register_loss(
    "aot",
    formula="soft-label logistic of β·(sort(S_w − S_l) − sort(S^ref_w − S^ref_l)) over the batch",
    paper="Melnyk et al. 2024 (AOT), arXiv 2406.05882, paired",
    family="pairwise",
    needs=("ref",),
)
def aot(batch: ListBatch, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """Alignment via optimal transport, paired: the policy's chosen-minus-rejected log-likelihood
    margins should dominate the reference's in distribution (first-order stochastic dominance), not
    pair by pair. Over the batch the loss sees, the i-th smallest policy margin S_w − S_l is set
    against the i-th smallest reference margin, z_i = β·(sorted policy − sorted reference), with the
    logistic loss −(1−ε)·log σ(z) − ε·log σ(−z). One pair alone is DPO. The batch is the one the
    loss is called on (a micro-batch of training), as TRL sorts within a device's batch; lists add
    all their pairs. β = 0.1, ε = 0 as in TRL.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> columns = [[-10.0, -15, -8], [-12, -9, -12], [-11, -14, -11], [-11, -10, -10]]  # S_w, S_l, S_ref_w, S_ref_l
        >>> batch = ListBatch.from_pairs(*torch.tensor(columns))
        >>> round(LOSSES["aot"](batch).loss.mean().item(), 4)
        0.6218
    """
    check_beta(beta)
    check(0 <= label_smoothing < 0.5, "label_smoothing", label_smoothing, "must be in [0, 0.5)")
    rho = batch.log_ratios()
    pairs = batch.pairs
    logps_w, logps_l = pairs.take(batch.logps)
    ref_w, ref_l = pairs.take(batch.ref_logps)
    z = beta * _quantile_margins(logps_w - logps_l, ref_w - ref_l, pairs.valid)
    return _pairwise(batch, soft_label_logistic(z, label_smoothing), beta * rho)


@register_loss(
    "aot_unpaired",
    formula="soft-label logistic of β·(sort(ρ_w) − sort(ρ_l)) over the batch",
    paper="Melnyk et al. 2024 (AOT), arXiv 2406.05882, unpaired",
    family="pairwise",
    needs=("ref",),
)
def aot_unpaired(
    batch: ListBatch, *, beta: float = 0.1, label_smoothing: float = 0.0
) -> LossOutput:
    """Alignment via optimal transport on unpaired data: the distribution of chosen log-ratios
    ρ = S_θ − S_ref should dominate that of rejected ones, whichever prompt each came from. Over
    the batch, z_i = β·(i-th smallest ρ_w − i-th smallest ρ_l), logistic loss with label smoothing
    ε. One pair alone is DPO. Sorted within the batch the loss is called on, as `aot`.

    Example:
        >>> import torch
        >>> from prefopt.losses import LOSSES, ListBatch
        >>> columns = [[-10.0, -15, -8], [-12, -9, -12], [-11, -14, -11], [-11, -10, -10]]  # S_w, S_l, S_ref_w, S_ref_l
        >>> batch = ListBatch.from_pairs(*torch.tensor(columns))
        >>> round(LOSSES["aot_unpaired"](batch).loss.mean().item(), 4)
        0.6136
    """
    check_beta(beta)
    check(0 <= label_smoothing < 0.5, "label_smoothing", label_smoothing, "must be in [0, 0.5)")
    rho = batch.log_ratios()
    pairs = batch.pairs
    z = beta * _quantile_margins(*pairs.take(rho), pairs.valid)
    return _pairwise(batch, soft_label_logistic(z, label_smoothing), beta * rho)
