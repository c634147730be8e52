"""Oracles that judge lists of completions: verifiers (Python functions, the built-in
`constraints` and `python_tests`), reward models, LLM judges (local or over HTTP) and people
(the label store). One interface, one registry, every answer cached; `prefopt score` writes
their judgements as training data."""

from prefopt.oracles import judge as _judge  # noqa: F401  (each registers its oracle)
from prefopt.oracles import people, reward_model, verifier  # noqa: F401  (each registers its oracle)
from prefopt.oracles.base import ORACLES, Judgement, ListToJudge, Oracle, OracleOptions, make_oracle
from prefopt.oracles.cache import AnswerCache, judge
from prefopt.oracles.score import ScoreConfig, ScoreResult, score

__all__ = [
    "ORACLES",
    "AnswerCache",
    "Judgement",
    "ListToJudge",
    "Oracle",
    "OracleOptions",
    "ScoreConfig",
    "ScoreResult",
    "judge",
    "make_oracle",
    "score",
]
