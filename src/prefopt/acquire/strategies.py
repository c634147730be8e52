"""Acquisition functions as `init` / `select` with explicit state and seed, so that a round can be
replayed and tested without a model: what a round knows about its candidate lists goes in, the
chosen lists (and the next state) come out.

- `random`: a seeded uniform draw.
- `entropy`: the prompts whose answers the policy is least sure of (predictive entropy of the
  list's samples).
- `certainty`: the lists the implicit reward model is most certain about (Muldrew et al. 2024:
  confidently wrong implicit rankings carry the most information). Before any training the
  policy equals its reference, every implicit reward is 0 and certainty says nothing: then it
  falls back to entropy, and says so.
- `hybrid`: entropy keeps `oversample` × budget candidates, certainty picks the budget among them.

Each scores its candidates and picks by `rule` (top-k or a stochastic batch rule with coldness
`beta`)."""

from __future__ import annotations

import dataclasses

import torch

from prefopt.acquire.scores import certainty, implicit_rewards, predictive_entropy
from prefopt.acquire.selection import Rule, select
from prefopt.registry import Registry


@dataclasses.dataclass(frozen=True)
class Candidates:
    """The candidate lists of a round: each list's K sampled completions' summed log-probs under
    the policy (and the reference, for certainty) and their lengths, all [L, K]."""

    logps: torch.Tensor
    lengths: torch.Tensor
    ref_logps: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # [L, K] False for padding completions


@dataclasses.dataclass(frozen=True)
class AcquisitionState:
    seed: int
    round: int = 0


@dataclasses.dataclass(frozen=True)
class Selection:
    indices: list[int]  # into the candidates, in pick order
    scores: list[float]  # every candidate's acquisition score
    note: str = ""  # what the function did that the user should know (a fallback)


@dataclasses.dataclass(frozen=True)
class Acquisition:
    name: str
    rule: Rule = "top"
    beta: float = 1.0  # coldness of a stochastic rule
    dpo_beta: float = 0.1  # the β of the implicit reward r̂ = β·(S_θ − S_ref)
    length_normalize: bool = False  # entropy of per-token log-probs instead of summed ones
    # hybrid: entropy keeps oversample × budget lists for certainty to choose from
    oversample: int = 4

    def __post_init__(self) -> None:
        ACQUISITIONS.get(self.name)
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")

    def init(self, seed: int) -> AcquisitionState:
        return AcquisitionState(seed=seed)

    def select(
        self, state: AcquisitionState, candidates: Candidates, budget: int
    ) -> tuple[Selection, AcquisitionState]:
        generator = torch.Generator().manual_seed(state.seed * 1_000_003 + state.round)
        selection = ACQUISITIONS.get(self.name)(self, candidates, budget, generator)
        return selection, dataclasses.replace(state, round=state.round + 1)

    # the scores, each [L]
    def entropy(self, candidates: Candidates) -> torch.Tensor:
        logps, lengths = candidates.logps.double(), candidates.lengths.double()
        if candidates.mask is None:
            return predictive_entropy(logps, lengths, length_normalize=self.length_normalize)
        mask = candidates.mask.bool()
        per = logps / lengths.clamp(min=1) if self.length_normalize else logps
        return -(per * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def certainty(self, candidates: Candidates) -> torch.Tensor:
        if candidates.ref_logps is None:
            raise ValueError("certainty needs the reference log-probs of the candidates")
        return certainty(
            implicit_rewards(candidates.logps, candidates.ref_logps, self.dpo_beta), candidates.mask
        )


ACQUISITIONS: Registry = Registry("acquisition function")


def _pick(
    scores: torch.Tensor, budget: int, acquisition: Acquisition, generator, note: str = ""
) -> Selection:
    return Selection(
        select(scores, budget, acquisition.rule, acquisition.beta, generator), scores.tolist(), note
    )


@ACQUISITIONS.register("random")
def _random(acquisition: Acquisition, candidates: Candidates, budget: int, generator) -> Selection:
    count = candidates.logps.shape[0]
    return Selection(torch.randperm(count, generator=generator)[:budget].tolist(), [0.0] * count)


@ACQUISITIONS.register("entropy")
def _entropy(acquisition: Acquisition, candidates: Candidates, budget: int, generator) -> Selection:
    return _pick(acquisition.entropy(candidates), budget, acquisition, generator)


@ACQUISITIONS.register("certainty")
def _certainty(
    acquisition: Acquisition, candidates: Candidates, budget: int, generator
) -> Selection:
    scores = acquisition.certainty(candidates)
    if not bool(
        (scores > 0).any()
    ):  # round 0: the policy is its reference, every implicit reward 0
        return _pick(
            acquisition.entropy(candidates),
            budget,
            acquisition,
            generator,
            "certainty is 0 for every list (the policy equals its reference): chose by entropy",
        )
    return _pick(scores, budget, acquisition, generator)


@ACQUISITIONS.register("hybrid")
def _hybrid(acquisition: Acquisition, candidates: Candidates, budget: int, generator) -> Selection:
    entropy = acquisition.entropy(candidates)
    kept = select(entropy, budget * acquisition.oversample, "top")
    scores = acquisition.certainty(candidates)
    if not bool((scores[kept] > 0).any()):
        return _pick(
            entropy,
            budget,
            acquisition,
            generator,
            "certainty is 0 for every list (the policy equals its reference): chose by entropy",
        )
    chosen = select(scores[kept], budget, acquisition.rule, acquisition.beta, generator)
    return Selection([kept[i] for i in chosen], scores.tolist())
