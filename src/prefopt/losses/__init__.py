"""Preference objectives as pure functions of per-completion log-probs. Needs torch only.

    from prefopt.losses import LOSSES, ListBatch
    out = LOSSES["dpo"](ListBatch(logps=..., ref_logps=..., lengths=..., scores=...), beta=0.1)
    out.loss      # [B] per-example losses
    out.metrics   # detached [B] tensors: rewards, margins, accuracies, Kendall τ, NDCG

`Objective({"dpo": 1.0, "sft": 0.5}, params={"dpo": {"beta": 0.1}})` mixes losses by weight.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from prefopt.losses import listwise, pairwise, rl, sft, unlearning, unpaired  # noqa: F401  (each registers its losses)
from prefopt.losses.base import LOSSES, ListBatch, LossInfo, LossOutput, Pairs
from prefopt.losses.pairwise import RunningMean

_STATE_ARGUMENT = "running"


def loss_defaults(name: str) -> dict[str, Any]:
    """The keyword-only hyperparameters of a registered loss and their defaults."""
    parameters = inspect.signature(get_loss(name)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is p.KEYWORD_ONLY and p.name != _STATE_ARGUMENT
    }


def get_loss(name: str) -> Callable[..., LossOutput]:
    return LOSSES.get(name)


class Objective:
    """A weighted sum of registered losses, L = Σ_k w_k·L_k, checked when built: unknown loss
    names, unknown hyperparameters and invalid values (β ≤ 0, …) raise ValueError at once,
    not at the first training step. Holds the state of stateful losses (BCO's reward shift)."""

    def __init__(
        self,
        weights: str | Mapping[str, float],
        params: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self.weights = {weights: 1.0} if isinstance(weights, str) else dict(weights)
        self.params = {name: dict(values) for name, values in (params or {}).items()}
        if not self.weights:
            raise ValueError("loss: give at least one loss name")
        for name, weight in self.weights.items():
            get_loss(name)
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"loss: weight of {name!r} must be a number >= 0, got {weight!r}")
        for name, values in self.params.items():
            if name not in self.weights:
                raise ValueError(
                    f"loss_params: {name!r} is not one of the losses in use ({', '.join(self.weights)})"
                )
            allowed = loss_defaults(name)
            for key in values:
                if key not in allowed:
                    valid = ", ".join(allowed) or "none"
                    raise ValueError(
                        f"loss_params: {name} has no parameter {key!r}; valid: {valid}"
                    )
        families = {LOSSES[name].info.family == "unpaired" for name in self.weights}
        if len(families) > 1:
            raise ValueError(
                "loss: objectives for single answers (kto, bco, apo_zero_unpaired) train on their "
                "own layout of the data and cannot be mixed with the others"
            )
        self.states = {name: RunningMean() for name in self.weights if LOSSES[name].info.stateful}
        self(_probe_batch(), train=False)  # value checks live in the losses; run them now

    @property
    def needs(self) -> set[str]:
        return {
            need
            for name in self.weights
            for need in LOSSES[name].info.needs_for(self.params.get(name, {}))
        }

    @property
    def unpaired(self) -> bool:
        """Whether it trains on single answers with a verdict (KTO and its kin)."""
        return any(LOSSES[name].info.family == "unpaired" for name in self.weights)

    @property
    def single_answers(self) -> str | None:
        """What the data's single answers train as: "verdicts" (KTO and its kin) or None (they
        are grouped by prompt into lists)."""
        return "verdicts" if self.unpaired else None

    @property
    def needs_reference(self) -> bool:
        return "ref" in self.needs

    @property
    def beta(self) -> float:
        """β of the implicit reward β·log(π/π_ref) this objective trains (Rafailov et al. 2023, Eq. 5):
        that of the first loss with a β (as set, or its default); DPO's default 0.1 when none has one."""
        for name in self.weights:
            defaults = loss_defaults(name)
            if "beta" in defaults:
                return float(self.params.get(name, {}).get("beta", defaults["beta"]))
        return 0.1

    def __call__(self, batch: ListBatch, *, train: bool = True) -> LossOutput:
        total, metrics = None, {}
        prefix = len(self.weights) > 1
        for name, weight in self.weights.items():
            kwargs = dict(self.params.get(name, {}))
            if name in self.states:
                if train:
                    kwargs.setdefault(_STATE_ARGUMENT, self.states[name])
                else:
                    kwargs.setdefault(
                        "delta", self.states[name].mean if self.states[name].count >= 1 else None
                    )
            out = LOSSES[name](batch, **kwargs)
            total = weight * out.loss if total is None else total + weight * out.loss
            for key, value in out.metrics.items():
                metrics[f"{name}/{key}" if prefix else key] = value
            if prefix:
                metrics[f"{name}/loss"] = out.loss.detach()
        return LossOutput(loss=total, metrics=metrics)

    def terms(self) -> list[tuple[str, float, dict, str, str]]:
        """(name, weight, parameters, formula, paper) of each loss of the mix (model cards)."""
        return [(name, weight, self.params.get(name, {}), LOSSES[name].info.formula,
                 LOSSES[name].info.paper) for name, weight in self.weights.items()]  # fmt: skip

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {name: state.state_dict() for name, state in self.states.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, float]]) -> None:
        for name, values in state.items():
            self.states[name].load_state_dict(values)


def _probe_batch() -> ListBatch:
    token_logps = torch.tensor([[[-0.5, -1.0, -0.3], [-1.2, -0.8, -2.0]]])
    token_mask = torch.tensor([[[True, True, False], [True, True, True]]])
    ref_token_logps = torch.tensor([[[-1.0, -1.0, 0.0], [-1.5, -1.0, -1.0]]])
    return ListBatch(
        logps=(token_logps * token_mask).sum(-1),
        ref_logps=ref_token_logps.sum(-1),
        scores=torch.tensor([[1.0, 0.0]]),
        token_logps=token_logps,
        token_mask=token_mask,
        ref_token_logps=ref_token_logps,
        sampling_log_weights=torch.tensor([[-0.2, -0.9]]),
        anchor_logps=torch.tensor([[-2.5, -3.0]]),
        prompt_logps=torch.tensor([-4.0]),
        prompt_lengths=torch.tensor([3.0]),
        mismatched_logps=torch.tensor([-6.0]),
        mismatched_ref_logps=torch.tensor([-6.5]),
    )


__all__ = [
    "LOSSES",
    "ListBatch",
    "LossInfo",
    "LossOutput",
    "Objective",
    "Pairs",
    "RunningMean",
    "get_loss",
    "loss_defaults",
]
