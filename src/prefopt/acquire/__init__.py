"""Choosing what is worth labelling: acquisition scores (predictive entropy, implicit-reward
certainty) and batch selection (top-k, and the stochastic softmax, power and soft-rank rules).
Pure functions of log-probs; torch only."""

from prefopt.acquire.scores import certainty, implicit_rewards, pair_uncertainty, predictive_entropy
from prefopt.acquire.selection import log_weights, select, selection_probabilities

__all__ = [
    "certainty",
    "implicit_rewards",
    "log_weights",
    "pair_uncertainty",
    "predictive_entropy",
    "select",
    "selection_probabilities",
]
