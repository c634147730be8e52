"""Did the model get better? Bootstrap intervals over prompts, win rates (raw and
length-controlled), a KL estimate, and the ranking diagnostics of Chen et al. 2024; `prefopt
eval` (prefopt.evaluate.run) puts them together."""

from prefopt.evaluate.stats import (
    Estimate,
    WinRate,
    bootstrap_mean,
    difficulty,
    idealized_log_ratio,
    idealized_ranking_accuracy,
    kl_estimate,
    length_controlled_win_rate,
    ranking_accuracy,
    win_rate,
)

__all__ = [
    "Estimate",
    "WinRate",
    "bootstrap_mean",
    "difficulty",
    "idealized_log_ratio",
    "idealized_ranking_accuracy",
    "kl_estimate",
    "length_controlled_win_rate",
    "ranking_accuracy",
    "win_rate",
]
