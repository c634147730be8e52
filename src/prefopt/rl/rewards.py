"""The reward of `prefopt rl`: one oracle or several, each with a weight. An answer's reward is the
weighted sum over the oracles that scored it; an oracle that abstains on a prompt (not
applicable, as TRL's reward functions returning None) leaves that prompt's sum, and a prompt no
oracle scored gets 0 for every answer, so its group carries no signal."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from prefopt.errors import TrainingError
from prefopt.oracles import ListToJudge, make_oracle


@dataclasses.dataclass
class Scored:
    """A list's rewards (the weighted sum) and each oracle's scores (None: it abstained)."""

    rewards: list[float]
    by_oracle: dict[str, list[float] | None]


@dataclasses.dataclass
class Rewards:
    names: list[str]  # one per oracle, as the metrics name it: rewards/NAME/mean
    oracles: list
    weights: list[float]

    @classmethod
    def of(cls, specs: list[tuple[str, dict, float]]) -> Rewards:
        counts = {name: sum(s[0] == name for s in specs) for name, _, _ in specs}
        names = [name if counts[name] == 1 else f"{name}_{i + 1}" for i, (name, _, _) in
                 enumerate(specs)]  # fmt: skip
        oracles = [make_oracle(name, options) for name, options, _ in specs]
        return cls(names, oracles, [weight for _, _, weight in specs])

    def score(self, lists: list[ListToJudge], sources: list[str]) -> list[Scored]:
        """Each list's rewards, with what each oracle gave it."""
        scored = [Scored([0.0] * len(item.completions), {}) for item in lists]
        for name, oracle, weight in zip(self.names, self.oracles, self.weights, strict=True):
            for n, judgement in enumerate(oracle.judge(lists)):
                scores = scored[n].by_oracle[name] = _scores(judgement)
                if scores is None:
                    continue
                if not all(math.isfinite(s) for s in scores):
                    raise TrainingError(f"oracle {name} gave a reward that is not a finite number "
                                        f"to an answer of {sources[n]}: {scores}")  # fmt: skip
                scored[n].rewards = [
                    total + weight * score
                    for total, score in zip(scored[n].rewards, scores, strict=True)
                ]
        return scored

    def metrics(self, scored: list[Scored]) -> dict[str, float]:
        """Per oracle, TRL's rewards/NAME/mean over the answers it scored, and the prompts it
        abstained on."""
        metrics = {}
        for name in self.names:
            given = [s for item in scored if item.by_oracle[name] for s in item.by_oracle[name]]
            metrics[f"rewards/{name}/mean"] = float(np.mean(given)) if given else float("nan")
            metrics[f"rewards/{name}/abstained"] = sum(i.by_oracle[name] is None for i in scored)
        return metrics

    @property
    def failures(self) -> int:
        """Answers a verifier failed on so far (it raised, and scored them 0)."""
        return sum(sum(getattr(o, "failures", {}).values()) for o in self.oracles)

    def close(self) -> None:
        for oracle in self.oracles:
            oracle.close()


def _scores(judgement) -> list[float] | None:
    """Scores, or ranks as scores (rank 1 best: the negated rank), or None if it abstained."""
    if judgement.abstained is not None:
        return None
    if judgement.scores is not None:
        return [float(s) for s in judgement.scores]
    return [-float(rank) for rank in judgement.ranks]
