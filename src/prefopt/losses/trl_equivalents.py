"""Which prefopt loss and parameters compute what a TRL trainer option computes, on the same
log-probs. One table, read by docs/losses.md and checked number by number against TRL's own code
by tests/losses/test_trl_equivalents.py (when TRL is installed). Needs nothing."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrlEquivalent:
    trainer: str  # TRL's trainer: "DPO", "CPO", "ORPO" or "KTO"
    # the fields of its config that select the objective (TRL's defaults for the rest)
    config: dict[str, Any]
    loss: dict[str, float]  # prefopt's `loss` setting
    # prefopt's `loss_params`
    loss_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    note: str = ""


def _dpo(
    loss_type: str, loss: str, params: dict | None = None, note: str = "", **config
) -> TrlEquivalent:
    return TrlEquivalent(
        "DPO",
        {"loss_type": [loss_type], **config},
        {loss: 1.0},
        {loss: params} if params else {},
        note,
    )


TRL_EQUIVALENTS: tuple[TrlEquivalent, ...] = (
    _dpo("sigmoid", "dpo"),
    _dpo("sigmoid_norm", "dpo", {"length_normalize": True}),
    _dpo("hinge", "hinge"),
    _dpo(
        "ipo",
        "ipo",
        {"length_normalize": True},
        "TRL divides each log-ratio by its completion's length; "
        "prefopt's default is the paper's summed form",
    ),
    _dpo(
        "exo_pair",
        "exo",
        {"label_smoothing": 1e-3},
        "TRL's `label_smoothing` is ε and must be > 0 there too",
        label_smoothing=1e-3,
    ),
    _dpo("nca_pair", "nca", note="at K = 2 prefopt's soft targets are one-hot"),
    _dpo("robust", "robust", {"label_smoothing": 0.1}, label_smoothing=0.1),
    _dpo("bco_pair", "bco_pair", {"delta": 0.0}, "TRL's DPOTrainer keeps no running reward shift"),
    _dpo("sppo_hard", "sppo_hard"),
    _dpo("aot", "aot"),
    _dpo("aot", "aot", {"label_smoothing": 0.1}, label_smoothing=0.1),
    _dpo("aot_unpaired", "aot_unpaired"),
    _dpo("apo_zero", "apo_zero"),
    _dpo("apo_down", "apo_down"),
    _dpo(
        "discopop",
        "discopop",
        {"beta": 0.1},
        "prefopt's default β is the paper's 0.05; `tau` is TRL's `discopop_tau`",
    ),
    _dpo("sft", "sft", {"nll_reduction": "tokens"}, "one mean over the batch's chosen tokens"),
    TrlEquivalent(
        "DPO",
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
        {"dpo": 1.0, "sft": 0.5},
        {"sft": {"nll_reduction": "tokens"}},
        "several loss types are a weighted mix; this one is RPO as TRL writes it (Pang et al.), "
        "where `sft`'s default `nll_reduction: sequence` would average per sequence instead",
    ),
    _dpo("sigmoid", "ld_dpo", {"alpha": 0.5}, ld_alpha=0.5),
    _dpo("sigmoid", "wpo", use_weighting=True),
    _dpo("sigmoid", "fdpo", {"divergence": "forward_kl"}, f_divergence_type="forward_kl"),
    _dpo(
        "sigmoid",
        "fdpo",
        {"divergence": "js"},
        "`js_divergence` is `js` (the constant log 2 cancels)",
        f_divergence_type="js_divergence",
    ),
    _dpo(
        "sigmoid",
        "fdpo",
        {"divergence": "alpha", "alpha": 0.7},
        "`alpha` = 1 − TRL's `f_alpha_divergence_coef`",
        f_divergence_type="alpha_divergence",
        f_alpha_divergence_coef=0.3,
    ),
    TrlEquivalent(
        "CPO",
        {"loss_type": "simpo", "simpo_gamma": 0.5, "cpo_alpha": 0.0},
        {"simpo": 1.0},
        {"simpo": {"beta": 0.1, "gamma_beta_ratio": 5.0}},
        "TRL's β defaults to 0.1 and γ to 0.5 (γ/β = 5); prefopt's defaults are the paper's β = 2, γ/β = ¼",
    ),
    TrlEquivalent(
        "CPO",
        {"loss_type": "simpo", "simpo_gamma": 0.5, "cpo_alpha": 0.0, "alpha": 0.25},
        {"simpo": 1.0},
        {"simpo": {"beta": 0.1, "gamma_beta_ratio": 5.0, "alpha": 0.25}},
        "AlphaPO (TRL's `loss_type: alphapo` sets exactly this)",
    ),
    TrlEquivalent(
        "ORPO",
        {},
        {"orpo": 1.0},
        {"orpo": {"odds_weight": 0.1, "nll_reduction": "tokens", "nll_prompt": True}},
        "TRL's NLL counts the prompt's tokens too; prefopt's default NLL is completion-only",
    ),
)

KTO_NOTE = (
    "single answers with `label`; the mismatched answer of each prompt is fixed when the data is "
    "read (TRL cycles answers within each batch); z₀ is the batch's mean over every process"
)
TRL_EQUIVALENTS += (
    TrlEquivalent("KTO", {}, {"kto": 1.0}, {}, KTO_NOTE),
    TrlEquivalent(
        "KTO",
        {"desirable_weight": 1.33, "undesirable_weight": 0.7},
        {"kto": 1.0},
        {"kto": {"desirable_weight": 1.33, "undesirable_weight": 0.7}},
    ),
    TrlEquivalent("KTO", {"loss_type": "apo_zero_unpaired"}, {"apo_zero_unpaired": 1.0}),
)

NOT_IN_PREFOPT: dict[str, str] = {
    "BCOConfig (removed from TRL in 1.x)": "`loss: bco` is its objective on single answers with "
    "the running reward shift; the paper's underlying-distribution matching (a density-ratio "
    "classifier on prompt embeddings) is not offered"
}  # TRL options prefopt does not offer yet, and why


# TRL's GRPOTrainer: each `loss_type` as `grpo`'s parameters (tests/losses/test_trl_grpo.py checks
# each against GRPOTrainer._compute_loss, for both importance-sampling levels, β = 0 and β > 0)
GRPO_LOSS_TYPES: dict[str, dict[str, Any]] = {
    "grpo": {"aggregation": "sequence"},
    "bnpo": {"aggregation": "token"},
    "dapo": {"aggregation": "token"},
    "dr_grpo": {"aggregation": "constant"},
}
# every GRPOConfig setting that changes the objective, and prefopt's
GRPO_SETTINGS: dict[str, str] = {
    "loss_type": "`grpo`'s `aggregation`: grpo → sequence, bnpo and dapo → token (dapo's "
    "normalizer is the whole generation batch: prefopt's step gives the objective that batch), "
    "dr_grpo → constant with `max_completion_length`",
    "scale_rewards (group, batch, none)": "`scale_rewards` (the same values; `rloo` and "
    "`reinforce_pp` fix their own)",
    "epsilon, epsilon_high": "`epsilon_low`, `epsilon_high` (DAPO's clip-higher: 0.28)",
    "importance_sampling_level (token, sequence)": "`importance_sampling` (sequence is GSPO)",
    "beta": "`beta` (0: no reference pass)",
    "use_bias_correction_kl": "`kl_importance_weight` (default true, as TRL)",
    "mask_truncated_completions": "a setting of `prefopt rl` (answers cut at the length limit "
    "leave the batch), not of the objective",
}
