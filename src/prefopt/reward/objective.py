"""The objectives of a reward model are the loss library's, applied to rewards r(x, y) from the
scalar head in place of the policy's β-scaled log-ratios: with β = 1 and a reference of 0, DPO's
loss is the Bradley–Terry reward model's and Plackett–Luce DPO's is the Plackett–Luce rank model's
(same tie rule). Only the centering term is a reward model's own."""

from __future__ import annotations

import math

import torch

from prefopt.losses import LOSSES, ListBatch, LossOutput

# objective -> the library loss that is its formula on rewards
REWARD_OBJECTIVES = {
    "bradley_terry": "dpo",  # −log σ(r_w − r_l − m·(s_w − s_l)); on a list, every pair with a higher score
    "plackett_luce": "plackett_luce",  # −Σ_k [r_k − log Σ_{j ranked ≤ k} exp r_j]; K = 2 is Bradley–Terry
    # single answers: −log σ(r) if desirable, −log σ(−r) if not (BCO's classifier with no shift)
    "logistic": "bco",
    "regression": None,  # single answers: (r − score)², a rating's or a list's score
}
# what each objective trains on when the data has single answers: their verdicts, or their scores
SINGLE_ANSWERS = {"logistic": "verdicts", "regression": "scores"}
# the policy's metrics that mean nothing for a reward model (its "log-probs" are its rewards)
_POLICY_METRICS = ("logps/chosen", "logps/rejected", "ranking_accuracy")


class RewardObjective:
    """L = loss(r) + c·(2·mean_k r_k)²: the loss on the list's rewards, plus the centering term
    that keeps rewards near zero (Eisenstein et al. 2023, arXiv 2312.09244; on a pair it is TRL's
    center_rewards_coefficient·(r_w + r_l)²). The Objective interface of the training loop."""

    needs: set[str] = set()
    needs_reference = False

    def __init__(
        self,
        objective: str,
        *,
        margin: float = 0.0,
        center_rewards_coefficient: float | None = None,
    ):
        if objective not in REWARD_OBJECTIVES:
            raise ValueError(
                f"objective: unknown {objective!r}; valid: {', '.join(REWARD_OBJECTIVES)}"
            )
        if margin and objective != "bradley_terry":
            raise ValueError("margin: applies to the bradley_terry objective only")
        coefficient = center_rewards_coefficient or 0.0
        if not (math.isfinite(coefficient) and coefficient >= 0):
            raise ValueError(
                f"center_rewards_coefficient must be a finite number >= 0, got {coefficient!r}"
            )
        name = REWARD_OBJECTIVES[objective]
        self.name = objective
        self.loss = LOSSES[name] if name else _regression
        self.params = {"beta": 1.0} | ({"margin": margin} if margin else {})
        self.params |= {"delta": 0.0} if objective == "logistic" else {}
        self.center = coefficient
        self.single_answers = SINGLE_ANSWERS.get(objective)
        self.unpaired = self.single_answers is not None

    def __call__(self, batch: ListBatch, *, train: bool = True) -> LossOutput:
        rewards = ListBatch(
            logps=batch.logps,
            ref_logps=torch.zeros_like(batch.logps),
            scores=batch.scores,
            mask=batch.mask,
            lengths=batch.lengths,
        )
        out = self.loss(rewards, **self.params)
        metrics = {key: value for key, value in out.metrics.items() if key not in _POLICY_METRICS}
        if self.single_answers == "verdicts":  # the verdict the reward predicts: good when r > 0
            right = (rewards.logps > 0) == (rewards.scores == 1)
            metrics["accuracy"] = _answer_mean(right.float(), rewards.mask)
        loss = out.loss
        if self.center:
            mask = rewards.mask
            mean = torch.where(mask, rewards.logps, 0.0).sum(1) / mask.sum(1)
            centering = (2 * mean) ** 2
            loss = loss + self.center * centering
            metrics["centering"] = centering.detach()
        return LossOutput(loss=loss, metrics=metrics)

    def terms(self) -> list[tuple[str, float, dict, str, str]]:
        """(name, weight, parameters, formula, paper) of the objective, for the model card."""
        params = {"center_rewards_coefficient": self.center} if self.center else {}
        if self.name == "regression":
            return [("regression", 1.0, params, "(r − s)² on each answer's rating or score",
                     "least squares")]  # fmt: skip
        info = self.loss.info
        return [(self.name, 1.0, params | {k: v for k, v in self.params.items() if k != "beta"},
                 f"{info.formula} on rewards r (β = 1, no reference)", info.paper)]  # fmt: skip

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _answer_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values, 0.0).sum(1) / mask.sum(1).clamp(min=1)


def _regression(batch: ListBatch, beta: float = 1.0) -> LossOutput:
    """(r − s)² per answer, averaged per list: the reward regresses the score (a rating)."""
    rewards = batch.logps
    squared = (rewards - batch.scores) ** 2
    loss = _answer_mean(squared, batch.mask)
    return LossOutput(loss, {"rewards": rewards.detach(), "mse": loss.detach()})
