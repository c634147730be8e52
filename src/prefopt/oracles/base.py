"""One interface for every oracle: it receives lists (a prompt and its K completions, with the
row's other fields) and returns, per list, a score for each completion (higher is better) or a
ranking with ties, or abstains with a reason. Oracles are registered by name, take typed
options, are called on batches, and every answer they give is cached by what was asked."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from prefopt.registry import Registry
from prefopt.settings import build


@dataclasses.dataclass(frozen=True)
class ListToJudge:
    prompt: Any  # a string or chat messages
    completions: tuple[str, ...]
    # the row's other fields (constraints, tests)
    record: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Judgement:
    """Per completion `scores` (higher is better) or `ranks` (1 = best, equal = tied); or
    `abstained` with the reason. `details` holds what an oracle wants kept per completion (a
    verifier's named checks, a judge's pairwise verdicts)."""

    scores: tuple[float, ...] | None = None
    ranks: tuple[int, ...] | None = None
    abstained: str | None = None
    details: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.ranks is None) and self.abstained is None:
            raise ValueError("a judgement gives scores or ranks, or abstains")

    @property
    def order_values(self) -> tuple[float, ...]:
        """Higher is better, whichever the oracle gave."""
        return (
            self.scores if self.scores is not None else tuple(-float(rank) for rank in self.ranks)
        )

    @property
    def all_tied(self) -> bool:
        return self.abstained is None and len(set(self.order_values)) == 1

    def to_json(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
            if value is not None
        }

    @classmethod
    def from_json(cls, data: dict) -> Judgement:
        return cls(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in data.items()
            }
        )


class OracleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Oracle(abc.ABC):
    """An oracle of one kind with its options. `identity` is everything that changes its answers
    (its name, options, the model's fingerprint, the prompt template): the answer cache's key."""

    name: ClassVar[str]
    Options: ClassVar[type[OracleOptions]]
    # answers of an oracle that samples are not cached unless asked
    deterministic: ClassVar[bool] = True
    # a score means the same across lists (a judge's only within one)
    absolute_scores: ClassVar[bool] = True

    def __init__(self, options: OracleOptions):
        self.options = options

    def identity(self) -> dict:
        return {"oracle": self.name, "options": self.options.model_dump(mode="json")}

    @abc.abstractmethod
    def judge(self, lists: list[ListToJudge]) -> list[Judgement]:
        """One judgement per list, in order."""

    def close(self) -> None:  # noqa: B027  (a hook: most oracles hold nothing to release)
        """Release what the oracle holds (a model, a client)."""


ORACLES: Registry[type[Oracle]] = Registry("oracle")


def make_options(name: str, options: dict[str, Any] | None = None) -> OracleOptions:
    """The options of oracle `name`, checked (unknown names and bad values name the option)."""
    return build(ORACLES.get(name).Options, dict(options or {}), f"oracle {name}")


def make_oracle(name: str, options: dict[str, Any] | None = None) -> Oracle:
    """The oracle `name` with its options checked."""
    return ORACLES.get(name)(make_options(name, options))
