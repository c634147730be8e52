"""The people oracle: the `prefopt label` store. Lists become items (identified by their content,
so asking twice adds nothing), handed to annotators by priority in `prefopt label serve` on the
same store; the oracle waits, showing progress, until each list has R labels or the deadline
passes, and reads the rankings back from the labels: no export step. A list's completions are
scored by their mean rank over its labels (ties as the labels gave them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar, Literal

from prefopt.data import PreferenceRecord
from prefopt.errors import OracleError
from prefopt.label.store import Store, content_key
from prefopt.oracles.base import ORACLES, Judgement, ListToJudge, Oracle, OracleOptions


class PeopleOptions(OracleOptions):
    db: str = "labels.db"  # the label store: a SQLite file or a SQLAlchemy URL
    labels_per_list: int = 1  # R: labels wanted from different people
    # stop waiting after this long (None: wait until every list has R)
    deadline_minutes: float | None = None
    # when the deadline passes before every list has R labels: use the lists with 1 ≤ n < R labels,
    # count them as abstentions, or stop (the labels given so far stay in the store; --resume waits again)
    on_deadline: Literal["use_what_is_there", "abstain", "stop"] = "use_what_is_there"
    poll_seconds: float = 2.0
    # of the new items without a `priority` field of their own (the loop gives its
    priority: float = 0.0
    # lists their acquisition scores)


@ORACLES.register("people")
class PeopleOracle(Oracle):
    name: ClassVar[str] = "people"
    Options: ClassVar[type[OracleOptions]] = PeopleOptions
    absolute_scores: ClassVar[bool] = False  # ranks within a list, not a scale across lists
    # the store is its own record; a later ask may find more labels
    deterministic: ClassVar[bool] = False

    def __init__(self, options: PeopleOptions):
        super().__init__(options)
        url = options.db if "://" in options.db else f"sqlite:///{options.db}"
        self.store = Store(url, redundancy=options.labels_per_list)
        self.on_progress: Callable[[int, int], None] | None = None  # (labels in, labels wanted)

    def add(self, lists: list[ListToJudge], priorities: list[float] | None = None) -> list[int]:
        """Put the lists in the store (those already there are kept) and return their item ids."""
        self.store.add_items(
            [
                PreferenceRecord(
                    item.prompt,
                    item.completions,
                    (0.0,) * len(item.completions),
                    source="asked by an oracle",
                )
                for item in lists
            ]
        )
        keys = [content_key(item.prompt, item.completions) for item in lists]
        ids = self.store.item_ids(keys)
        item_ids = [ids[key] for key in keys]
        # a list's own `priority` field (the loop writes its acquisition score there), else the option's
        values = priorities or [
            float(item.record.get("priority", self.options.priority)) for item in lists
        ]
        self.store.set_priorities(dict(zip(item_ids, values, strict=True)))
        return item_ids

    def judge(
        self, lists: list[ListToJudge], priorities: list[float] | None = None
    ) -> list[Judgement]:
        item_ids = self.add(lists, priorities)
        wanted = self.options.labels_per_list
        minutes = self.options.deadline_minutes
        deadline = None if minutes is None else time.monotonic() + 60 * minutes
        while True:
            labels = self.store.judgements(item_ids)
            have = sum(min(len(labels[i]), wanted) for i in item_ids)
            if self.on_progress is not None:
                self.on_progress(have, wanted * len(item_ids))
            if have == wanted * len(item_ids):
                break
            if deadline is not None and time.monotonic() >= deadline:
                if self.options.on_deadline == "stop":
                    raise OracleError(
                        f"people: the deadline ({minutes:g} min) passed with {have} of "
                        f"{wanted * len(item_ids)} labels; stopped (on_deadline: stop). Every label "
                        f"given is kept in {self.options.db}; run again with --resume to wait again"
                    )
                break
            time.sleep(self.options.poll_seconds)
        return [self._judgement(labels[i]) for i in item_ids]

    def _judgement(self, labels: list[dict]) -> Judgement:
        """The mean rank of each completion over the first R labels; labels that call both answers
        of a pair bad prefer neither and rank nothing, and a list only they judged abstains."""
        wanted = self.options.labels_per_list
        if not labels:
            return Judgement(abstained="no label by the deadline")
        if len(labels) < wanted and self.options.on_deadline == "abstain":
            return Judgement(abstained=f"{len(labels)} of {wanted} labels by the deadline")
        used = [label["ranks"] for label in labels[:wanted] if label["choice"] != "both_bad"]
        if not used:
            return Judgement(abstained="both answers bad")
        mean_ranks = [sum(ranks[k] for ranks in used) / len(used) for k in range(len(used[0]))]
        return Judgement(
            scores=tuple(-rank for rank in mean_ranks),
            details=tuple({"ranks": [r[k] for r in used]} for k in range(len(used[0]))),
        )

    def close(self) -> None:
        self.store.close()
