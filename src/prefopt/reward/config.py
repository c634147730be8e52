"""The settings of `prefopt reward train`: a training run's settings (as `prefopt train`), and
the reward model's objective in place of a loss mix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from prefopt.reward.objective import RewardObjective
from prefopt.train.config import RunSettings


class RewardConfig(RunSettings):
    """The settings of `prefopt reward train`."""

    output_dir: str = Field(
        "runs/reward",
        description="Where checkpoints, metrics.jsonl, config.yaml and the "
        "reward model (output_dir/model) go.",
    )
    learning_rate: float = Field(
        1e-5, gt=0, description="AdamW peak learning rate (LoRA usually wants ~1e-4)."
    )
    objective: Literal["plackett_luce", "bradley_terry", "logistic", "regression"] = Field(
        "plackett_luce",
        description="plackett_luce: the likelihood of each list's ranking (ties share a place; "
        "on a pair it is Bradley–Terry); bradley_terry: every pair of a list with "
        "a higher score, averaged per list; logistic: each answer alone, σ(r) the "
        "probability it is desirable (thumbs; ratings at desirable_rating; a list's "
        "best answers); regression: each answer alone, r regresses its rating or score.",
    )
    margin: float = Field(
        0.0,
        ge=0,
        description="bradley_terry: ask each pair for a reward gap of margin × its "
        "score gap (Llama 2's margin; 0: none).",
    )
    center_rewards_coefficient: float | None = Field(
        None,
        ge=0,
        description="Weight of the term that keeps "
        "rewards centred on zero, "
        "(2·mean reward of the list)² "
        "(TRL's setting; on a pair "
        "(r_w + r_l)²).",
    )
    calibration_bins: int = Field(
        10,
        ge=2,
        le=100,
        description="Bins of the predicted preference probability in the calibration metrics.",
    )

    @model_validator(mode="after")
    def _objective_builds(self):
        self.build_objective()  # a margin without bradley_terry fails here, at config load
        return self

    def build_objective(self):
        return RewardObjective(
            self.objective,
            margin=self.margin,
            center_rewards_coefficient=self.center_rewards_coefficient,
        )
