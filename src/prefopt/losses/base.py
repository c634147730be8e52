"""The batch every objective reads, the pair expansion pairwise losses share, and the metrics
every objective reports. Needs torch only."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from prefopt.registry import Registry


@dataclasses.dataclass(frozen=True)
class LossOutput:
    """`loss`: [B] per-example loss (grad). `metrics`: name -> detached [B] tensor (NaN where
    a metric is undefined for that example, e.g. no pair in an all-tied list)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class ListBatch:
    """Per-completion quantities for B prompts with K completions each (a pair is K=2 with
    scores (1, 0)). Masked items (ragged lists) are zeroed on construction so that whatever
    padding holds never reaches a loss or its gradient. Floating inputs are promoted to at
    least float32, so bf16 log-probs are never combined in bf16."""

    logps: torch.Tensor  # [B, K] summed completion log-probs under the policy
    ref_logps: torch.Tensor | None = None  # [B, K] same under the reference
    lengths: torch.Tensor | None = None  # [B, K] completion token counts
    scores: torch.Tensor | None = None  # [B, K] higher is better
    mask: torch.Tensor | None = None  # [B, K] False for padding items
    token_logps: torch.Tensor | None = None  # [B, K, T] per-token log-probs (policy)
    token_mask: torch.Tensor | None = None  # [B, K, T] True at completion tokens
    # [B, K, T] per-token log-probs (reference), with token_logps
    ref_token_logps: torch.Tensor | None = None
    # [B, K] log of WPO's weight of each item (no grad)
    sampling_log_weights: torch.Tensor | None = None
    # [B, K] same under a second, fixed reference (INPO's π_ref)
    anchor_logps: torch.Tensor | None = None
    # [B] summed log-probs of the prompt's tokens after its first
    prompt_logps: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None  # [B] how many tokens that is
    # [B, K, T] per-token log-probs under the policy that sampled the completions (π_old; no grad)
    old_token_logps: torch.Tensor | None = None
    advantages: torch.Tensor | None = None  # [B, K] each completion's advantage (no grad)
    # [B, K, T] importance weights π_old / π_sampler of each answer token, where another engine
    # sampled the answers (vLLM; `sampler_correction`); no grad
    sampler_weights: torch.Tensor | None = None
    # [B] summed log-probs of a mismatched answer to each prompt (another prompt's answer), under
    # the policy and the reference: KTO's estimate of KL(π‖π_ref) (no grad)
    mismatched_logps: torch.Tensor | None = None
    mismatched_ref_logps: torch.Tensor | None = None
    # sums a tensor over the processes that each hold a share of the batch (data parallel); the
    # batch-wide denominators of the RL objectives use it, so a sharded batch has the loss of the
    # whole one. None: this process holds the whole batch
    across: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        logps = _as_float(self.logps)
        if logps.dim() != 2:
            raise ValueError(f"ListBatch: logps must be [B, K], got shape {tuple(logps.shape)}")
        shape = logps.shape
        mask = (
            torch.ones(shape, dtype=torch.bool, device=logps.device)
            if self.mask is None
            else self.mask.bool()
        )
        scores = self.scores
        if scores is None:
            if shape[1] != 2:
                raise ValueError(
                    "ListBatch: scores are required when K != 2 (a pair defaults to scores (1, 0))"
                )
            scores = torch.tensor([1.0, 0.0], dtype=logps.dtype, device=logps.device).expand(shape)
        token_mask = self.token_mask
        token_logps = self.token_logps
        if token_logps is not None:
            token_logps = _as_float(token_logps)
            if token_logps.shape[:2] != shape:
                raise ValueError(
                    f"ListBatch: token_logps must be [B, K, T] with [B, K] = {tuple(shape)}"
                )
            token_mask = (
                torch.ones_like(token_logps, dtype=torch.bool)
                if token_mask is None
                else token_mask.bool()
            )
            token_mask = token_mask & mask.unsqueeze(-1)
            token_logps = token_logps.masked_fill(~token_mask, 0.0)
        lengths = self.lengths
        if lengths is None and token_mask is not None:
            lengths = token_mask.sum(-1)
        fields = {
            "ref_logps": self.ref_logps,
            "lengths": lengths,
            "scores": scores,
            "mask": mask,
            "sampling_log_weights": self.sampling_log_weights,
            "anchor_logps": self.anchor_logps,
            "advantages": self.advantages,
        }
        for name, value in fields.items():
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"ListBatch: {name} has shape {tuple(value.shape)}, expected {tuple(shape)}"
                )
        set_field = functools.partial(object.__setattr__, self)
        set_field("mask", mask)
        set_field("logps", logps.masked_fill(~mask, 0.0))
        set_field("scores", _as_float(scores).masked_fill(~mask, 0.0))
        for name in ("ref_logps", "anchor_logps"):
            if getattr(self, name) is not None:
                set_field(name, _as_float(getattr(self, name)).masked_fill(~mask, 0.0))
        if lengths is not None:
            set_field("lengths", _as_float(lengths).masked_fill(~mask, 1.0))
        for name in ("prompt_logps", "prompt_lengths", "mismatched_logps", "mismatched_ref_logps"):
            value = getattr(self, name)
            if value is not None:
                if value.shape != shape[:1]:
                    raise ValueError(
                        f"ListBatch: {name} has shape {tuple(value.shape)}, expected ({shape[0]},)"
                    )
                set_field(
                    name, _as_float(value).detach() if "mismatched" in name else _as_float(value)
                )
        if self.sampling_log_weights is not None:
            set_field(
                "sampling_log_weights",
                _as_float(self.sampling_log_weights).detach().masked_fill(~mask, 0.0),
            )
        set_field("token_logps", token_logps)
        set_field("token_mask", token_mask)
        for name in ("ref_token_logps", "old_token_logps"):
            value = getattr(self, name)
            if value is None:
                continue
            if token_logps is None or value.shape != token_logps.shape:
                raise ValueError(f"ListBatch: {name} needs token_logps of the same [B, K, T] shape")
            value = _as_float(value).masked_fill(~token_mask, 0.0)
            set_field(name, value.detach() if name == "old_token_logps" else value)
        if self.advantages is not None:
            set_field("advantages", _as_float(self.advantages).detach().masked_fill(~mask, 0.0))

    @classmethod
    def from_pairs(
        cls,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        chosen_lengths: torch.Tensor | None = None,
        rejected_lengths: torch.Tensor | None = None,
    ) -> ListBatch:
        """A batch of B pairs as K=2 lists, chosen first."""

        def stack(a, b):
            return (
                None if a is None else torch.stack([torch.as_tensor(a), torch.as_tensor(b)], dim=-1)
            )

        return cls(
            logps=stack(chosen_logps, rejected_logps),
            ref_logps=stack(ref_chosen_logps, ref_rejected_logps),
            lengths=stack(chosen_lengths, rejected_lengths),
        )

    # ----- what a loss asks of the batch (the registry puts the loss's name before each error) -----

    def log_ratios(self) -> torch.Tensor:
        """ρ = S_θ − S_ref per item."""
        if self.ref_logps is None:
            raise ValueError("needs ref_logps (reference log-probs); it is a reference-based loss")
        return self.logps - self.ref_logps

    def anchor(self) -> torch.Tensor:
        if self.anchor_logps is None:
            raise ValueError(
                "needs anchor_logps (log-probs under a second, fixed reference: anchor_model)"
            )
        return self.anchor_logps

    def safe_lengths(self) -> torch.Tensor:
        if self.lengths is None:
            raise ValueError("needs lengths (completion token counts) for length normalisation")
        return self.lengths.clamp(min=1.0)

    def avg_logps(self) -> torch.Tensor:
        """A_θ = S_θ / |y| per item."""
        return self.logps / self.safe_lengths()

    def tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.token_logps is None:
            raise ValueError("needs token_logps and token_mask (it is a token-level objective)")
        return self.token_logps, self.token_mask

    def sampling_weights(self) -> torch.Tensor:
        if self.sampling_log_weights is None:
            raise ValueError(
                "needs sampling_log_weights (each completion's mean of log π(y_t) − log Σ_v π(v)²)"
            )
        return torch.exp(self.sampling_log_weights)

    def old_tokens(self) -> torch.Tensor:
        """Per-token log-probs under the policy that sampled: given, or (one pass over fresh
        samples) the policy's own, detached, so that the ratio is 1 in value."""
        tokens, _ = self.tokens()
        return tokens.detach() if self.old_token_logps is None else self.old_token_logps

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """`value` (detached) summed over the processes sharing the batch."""
        value = value.detach()
        return value if self.across is None else self.across(value)

    def mismatched_kl(self) -> torch.Tensor:
        """The batch mean of log π(y'|x) − log π_ref(y'|x) over mismatched pairs (x, y'), summed
        over the processes sharing the batch: a biased estimate of KL(π‖π_ref), no gradient."""
        if self.mismatched_logps is None or self.mismatched_ref_logps is None:
            raise ValueError(
                "needs mismatched_logps and mismatched_ref_logps (each prompt with another "
                "prompt's answer, under the policy and the reference)"
            )
        gaps = self.mismatched_logps - self.mismatched_ref_logps
        count = torch.tensor(float(gaps.numel()), device=gaps.device)
        return self.total(gaps.sum()) / self.total(count).clamp(min=1)

    def verdicts(self) -> torch.Tensor:
        """[B, K] bool: the answers judged desirable (score 1; score 0 is undesirable)."""
        valid = self.scores[self.mask]
        if not bool(((valid == 0) | (valid == 1)).all()):
            raise ValueError(
                "scores must be 1 (desirable) or 0 (undesirable) for each single answer, got "
                f"{sorted(set(valid.tolist()))[:5]}"
            )
        return self.mask & (self.scores == 1)

    def ref_tokens(self) -> torch.Tensor:
        if self.ref_token_logps is None:
            raise ValueError("needs ref_token_logps (the reference's per-token log-probs)")
        return self.ref_token_logps

    @functools.cached_property
    def pairs(self) -> Pairs:
        return Pairs.of(self.scores, self.mask)

    @functools.cached_property
    def best(self) -> torch.Tensor:
        """[B, K] bool: valid items holding the top score of their list (ties: all of them)."""
        top = self.scores.masked_fill(~self.mask, -math.inf).amax(dim=1, keepdim=True)
        return self.mask & (self.scores == top)

    @property
    def worse(self) -> torch.Tensor:
        """[B, K] bool: valid items below the top score of their list."""
        return self.mask & ~self.best


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Every (better, worse) pair of a list: items i < j oriented by score; ties and padding
    make no pair. Shapes [B, P] with P = K(K−1)/2."""

    better: torch.Tensor
    worse: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def of(cls, scores: torch.Tensor, mask: torch.Tensor) -> Pairs:
        batch, k = scores.shape
        i, j = torch.triu_indices(k, k, offset=1, device=scores.device)
        score_i, score_j = scores[:, i], scores[:, j]
        i_wins = score_i > score_j
        better = torch.where(i_wins, i, j)
        worse = torch.where(i_wins, j, i)
        valid = (score_i != score_j) & mask[:, i] & mask[:, j]
        return cls(better=better, worse=worse, valid=valid)

    def take(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair (better, worse) values of a [B, K] tensor."""
        return values.gather(1, self.better), values.gather(1, self.worse)

    def mean(self, per_pair: torch.Tensor) -> torch.Tensor:
        """[B, P] -> [B]: mean over each example's valid pairs (0 where it has none)."""
        count = self.valid.sum(1)
        total = torch.where(self.valid, per_pair, torch.zeros_like(per_pair)).sum(1)
        return total / count.clamp(min=1)

    def metric_mean(self, per_pair: torch.Tensor) -> torch.Tensor:
        """Like `mean`, detached, with NaN for examples that have no pair."""
        count = self.valid.sum(1)
        total = torch.where(self.valid, per_pair.detach().to(torch.float32), 0.0).sum(1)
        return torch.where(count > 0, total / count.clamp(min=1), math.nan)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of values where mask, along dim (0 where mask is empty)."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim)
    return total / mask.sum(dim).clamp(min=1)


# ----- hyperparameter checks: every message names the parameter (and the registry, the loss) -----


def check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ValueError(f"{name} {requirement}, got {value!r}")


def check_beta(beta: float) -> None:
    check(beta > 0, "beta", beta, "must be > 0")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    check(value in choices, name, value, f"must be one of {', '.join(map(repr, choices))}")


# ----- math several losses share -----


def soft_label_logistic(z: torch.Tensor, flip: float) -> torch.Tensor:
    """−(1−ε)·log σ(z) − ε·log σ(−z): the logistic loss of margin z when its label is flipped with
    probability ε (Mitchell 2023's conservative DPO; SimPO's label smoothing)."""
    return -(1 - flip) * F.logsigmoid(z) - flip * F.logsigmoid(-z)


def chosen_nll(
    batch: ListBatch, reduction: str = "sequence", with_prompt: bool = False
) -> torch.Tensor:
    """[B, P]: the NLL of each pair's better completion. `sequence`: its token mean −A_θ(y_w);
    `tokens`: −S_θ(y_w) scaled so that the mean over the batch's pairs is one mean over all their
    tokens, −Σ S / Σ |y| (TRL's reduction; on a batch of pairs, exactly). `with_prompt`: the prompt's
    tokens (after its first) count as the completion's, S_θ(x) + S_θ(y_w) over (|x| − 1) + |y_w|."""
    check_choice("nll_reduction", reduction, ("sequence", "tokens"))
    pairs = batch.pairs
    logps, lengths = pairs.take(batch.logps)[0], pairs.take(batch.safe_lengths())[0]
    if with_prompt:
        if batch.prompt_logps is None or batch.prompt_lengths is None:
            raise ValueError(
                "needs prompt_logps and prompt_lengths for an NLL over the prompt's tokens too"
            )
        logps = logps + batch.prompt_logps.unsqueeze(1)
        lengths = lengths + batch.prompt_lengths.unsqueeze(1)
    if reduction == "sequence":
        return -logps / lengths
    total = torch.where(pairs.valid, lengths, 0.0).sum()
    return -logps * pairs.valid.sum() / total.clamp(min=1)


def scored_below(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, K] -> [B, K]: how many valid items of its list each item is scored strictly above."""
    return ((scores.unsqueeze(2) > scores.unsqueeze(1)) & mask.unsqueeze(1)).sum(2)


def rank_gains(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Graded relevance from a ranking, any score scale: G = 2^rel − 1 with rel the number of items
    scored below (Burges 2010, LambdaMART's gain; ties share a gain)."""
    return 2.0 ** scored_below(scores, mask).to(scores.dtype) - 1.0


# ----- metrics every loss reports -----


def outputs(
    loss: torch.Tensor, rewards: torch.Tensor, batch: ListBatch, **extra: torch.Tensor
) -> LossOutput:
    """Bundle a per-example loss with the standard metrics of its implicit rewards [B, K]."""
    return LossOutput(loss=loss, metrics={**reward_metrics(rewards, batch), **extra})


def reward_metrics(rewards: torch.Tensor, batch: ListBatch) -> dict[str, torch.Tensor]:
    """Implicit rewards per item, margin and accuracy over (better, worse) pairs, policy log-probs
    and ranking accuracy of the policy likelihood (S_θ(better) ≥ S_θ(worse)), and for
    K > 2 Kendall τ and NDCG of the reward ordering against the scores."""
    rewards = rewards.detach().to(torch.float32)
    logps = batch.logps.detach().to(torch.float32)
    pairs = batch.pairs
    reward_better, reward_worse = pairs.take(rewards)
    logps_better, logps_worse = pairs.take(logps)
    metrics = {
        "rewards": rewards,
        "rewards/chosen": pairs.metric_mean(reward_better),
        "rewards/rejected": pairs.metric_mean(reward_worse),
        "reward_margin": pairs.metric_mean(reward_better - reward_worse),
        "reward_accuracy": pairs.metric_mean((reward_better > reward_worse).float()),
        "logps/chosen": pairs.metric_mean(logps_better),
        "logps/rejected": pairs.metric_mean(logps_worse),
        "ranking_accuracy": pairs.metric_mean((logps_better >= logps_worse).float()),
    }
    if rewards.shape[1] > 2:
        metrics["kendall_tau"] = pairs.metric_mean(torch.sign(reward_better - reward_worse))
        metrics["ndcg"] = ndcg(rewards, batch.scores.to(torch.float32), batch.mask)
    return metrics


def ndcg(predicted: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NDCG of the order by `predicted` against graded relevance from `scores`: an item's
    relevance is the number of valid items scored strictly below it, gain 2^rel − 1, discount
    1/log2(1 + position). Tied predictions score the expected DCG of a random tie-break (each
    place of a tied group gets the group's mean gain), so ties earn no credit for item order.
    NaN for lists with no gain."""
    gains = torch.where(mask, rank_gains(scores, mask), 0.0)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=scores.dtype)
    discounts = 1.0 / torch.log2(1.0 + positions)

    def dcg(order_by: torch.Tensor) -> torch.Tensor:
        ranked = torch.sort(
            order_by.masked_fill(~mask, -math.inf), dim=1, descending=True, stable=True
        )
        ranked_gains = gains.gather(1, ranked.indices)
        tied = (ranked.values.unsqueeze(2) == ranked.values.unsqueeze(1)).to(gains.dtype)
        group_mean_gains = (tied @ ranked_gains.unsqueeze(-1)).squeeze(-1) / tied.sum(-1)
        return (group_mean_gains * discounts).sum(1)

    ideal = dcg(scores)
    return torch.where(ideal > 0, dcg(predicted) / ideal.clamp(min=1e-12), math.nan)


# ----- descriptions for `prefopt losses` -----


@dataclasses.dataclass(frozen=True)
class LossInfo:
    formula: str
    paper: str
    family: str  # pairwise | listwise | unpaired | rl | sft | unlearning
    needs: tuple[str, ...]  # subset of NEEDS
    experimental: bool = False
    stateful: bool = False
    # need -> the parameter that asks it
    needs_if: dict[str, str] = dataclasses.field(default_factory=dict)

    def needs_for(self, params: dict) -> set[str]:
        return set(self.needs) | {
            need for need, parameter in self.needs_if.items() if params.get(parameter)
        }

    def describe_needs(self) -> str:
        """What the loss reads besides the policy's log-probs, in words (`prefopt losses`, docs)."""
        words = [NEEDS[need] for need in self.needs]
        words += [f"{NEEDS[need]} with {parameter}" for need, parameter in self.needs_if.items()]
        return ", ".join(words) or "policy only"


NEEDS = {
    "ref": "reference",
    "lengths": "lengths",
    "tokens": "token log-probs",
    "ref_tokens": "reference token log-probs",
    "sampling_weights": "WPO weights (the engine computes them)",
    "prompt": "prompt log-probs",
    "anchor": "a second reference (anchor_model)",
    "mismatched": "mismatched prompt/answer log-probs (KL estimate)",
}


LOSSES: Registry[Callable[..., LossOutput]] = Registry("loss", "losses")


def register_loss(
    name: str,
    *,
    formula: str,
    paper: str,
    family: str,
    needs: tuple[str, ...] = (),
    needs_if: dict[str, str] | None = None,
    **flags: bool,
) -> Callable:
    """Register a loss once, under `name`, with its formula and paper (read by `prefopt losses` and
    docs/losses.md). The registered function puts its name before every ValueError it raises, so
    the checks inside a loss need not repeat it."""

    def attach(fn: Callable[..., LossOutput]) -> Callable[..., LossOutput]:
        @functools.wraps(fn)
        def named(*args, **kwargs) -> LossOutput:
            try:
                return fn(*args, **kwargs)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None

        named.info = LossInfo(
            formula=formula,
            paper=paper,
            family=family,
            needs=needs,
            needs_if=needs_if or {},
            **flags,
        )
        return LOSSES.register(name)(named)

    return attach
