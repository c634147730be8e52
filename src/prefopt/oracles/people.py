"""The people oracle: the `prefopt label` store. Lists become items (identified by their content,
so asking twice adds nothing), handed to annotators by priority in `prefopt label serve` on the
same store; the oracle waits, showing progress, until each list has R labels or the deadline
passes, and reads the rankings back from the labels: no export step. A list's completions are
scored by their mean rank over its labels (ties as the labels gave them). With `task: thumbs` or
`rating`, each answer is an item of its own, judged alone (cheaper per answer than a ranking), and
scored by its labels' mean verdict (1 good, 0 bad) or rating."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar, Literal

from prefopt.data import PreferenceRecord
from prefopt.errors import OracleError
from prefopt.label.agreement import judged_value
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
    # what people are asked: rank a list's answers, or judge each answer alone (thumbs, rating)
    task: Literal["rank", "thumbs", "rating"] = "rank"
    scale: dict[str, str] | None = None  # rating: {point: anchor text}; default 1 to 5


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

    def _asked(self, item: ListToJudge) -> list[tuple]:
        """The (prompt, completions) of the store's items for one list: the list itself, or each
        of its answers alone."""
        if self.options.task == "rank":
            return [(item.prompt, tuple(item.completions))]
        return [(item.prompt, (completion,)) for completion in item.completions]

    def add(self, lists: list[ListToJudge], priorities: list[float] | None = None) -> list[int]:
        """Put the lists in the store (those already there are kept) and return their item ids
        (with thumbs or ratings, one per answer, list after list)."""
        asked = [self._asked(item) for item in lists]
        self.store.add_items(
            [PreferenceRecord(prompt, completions, (0.0,) * len(completions),
                              source="asked by an oracle")
             for items in asked for prompt, completions in items],
            task=self.options.task, scale=self.options.scale,
        )  # fmt: skip
        keys = [content_key(*pair, self.options.task) for items in asked for pair in items]
        ids = self.store.item_ids(keys)
        item_ids = [ids[key] for key in keys]
        # a list's own `priority` field (the loop writes its acquisition score there), else the option's
        values = priorities or [
            float(item.record.get("priority", self.options.priority)) for item in lists
        ]
        per_item = [value for value, items in zip(values, asked, strict=True) for _ in items]
        self.store.set_priorities(dict(zip(item_ids, per_item, strict=True)))
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
        if self.options.task == "rank":
            return [self._judgement(labels[i]) for i in item_ids]
        answers = iter(item_ids)
        return [self._answers_judgement([labels[next(answers)] for _ in item.completions])
                for item in lists]  # fmt: skip

    def _answers_judgement(self, per_answer: list[list[dict]]) -> Judgement:
        """Each answer's mean verdict (1 good, 0 bad) or rating over its first R labels; a list
        with an answer nobody judged abstains."""
        wanted = self.options.labels_per_list
        missing = [k for k, labels in enumerate(per_answer) if not labels]
        if missing:
            return Judgement(abstained=f"no label by the deadline for answer {missing[0] + 1}")
        if self.options.on_deadline == "abstain" and any(
            len(given) < wanted for given in per_answer
        ):
            return Judgement(abstained=f"fewer than {wanted} labels by the deadline")
        values = [
            [float(judged_value(label)) for label in labels[:wanted]] for labels in per_answer
        ]
        return Judgement(scores=tuple(sum(v) / len(v) for v in values),
                         details=tuple({self.options.task: v} for v in values))  # fmt: skip

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
