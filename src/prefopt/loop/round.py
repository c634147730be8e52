"""A loop's folder on disk, typed: a `Round` names every file of `round-N/` and says which of its
stages are done; a `RoundRecord` is one line of rounds.jsonl (what reports read)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NotRequired, TypedDict

STAGES = ("candidates", "generate", "acquire", "label", "train", "evaluate")


class AcquisitionSummary(TypedDict):
    function: str
    note: str | None
    chosen_mean_score: float
    candidate_mean_score: float


class RoundRecord(TypedDict):
    """One line of rounds.jsonl."""

    round: int
    seconds: dict[str, float]  # per stage, wall clock (0 for a stage done before a resume)
    # per stage, what was not its own work (loading, bookkeeping)
    overhead_seconds: dict[str, float]
    overhead_share: float
    labels: int  # lists labelled this round (late labels of earlier rounds included)
    late_labels: int
    labels_total: int  # labelled lists of every round so far
    left_out: dict[str, int]  # lists the oracle gave no usable label, by reason
    acquisition: AcquisitionSummary
    pairs: NotRequired[dict[str, int]]  # pair_rule best_worst: lists, pairs, below_margin
    regenerated: NotRequired[int]  # regenerate: lists sampled anew
    eval: NotRequired[dict]  # held out: score, baseline_score, win_rate (estimates with intervals)


@dataclasses.dataclass(frozen=True)
class Round:
    """Round `n` of the loop in `out`: its files (each written atomically by its stage), the files
    its stages leave, and the model folders it trains."""

    out: Path
    n: int

    @property
    def folder(self) -> Path:
        return self.out / f"round-{self.n}"

    def earlier(self) -> list[Round]:
        return [Round(self.out, m) for m in range(self.n)]

    def previous(self) -> Round:
        return Round(self.out, self.n - 1)

    def done(self, stage: str) -> bool:
        """Whether `stage` finished: the file it writes last exists (training: its model, or the
        note that there was nothing to train on)."""
        last = {
            "candidates": (self.candidates,),
            "generate": (self.generated,),
            "acquire": (self.acquisition,),
            "label": (self.labels,),
            "train": (self.trained_model, self.train_skipped),
            "evaluate": (self.eval,),
        }[stage]
        return any(path.exists() for path in last)

    # candidates: the prompts drawn (their keys in the pool), and with OPTune those sampled anew
    candidates = property(lambda self: self.folder / "candidates.json")
    regenerate = property(lambda self: self.folder / "regenerate.json")
    # generate: the prompts as a file `prefopt generate` reads, its output, and that it finished
    candidate_prompts = property(lambda self: self.folder / "candidates.jsonl")
    generations = property(lambda self: self.folder / "generations.jsonl")
    regenerated = property(lambda self: self.folder / "regenerated.jsonl")
    # generations.jsonl grows until then
    generated = property(lambda self: self.folder / "generations.done")
    # acquire
    acquisition = property(lambda self: self.folder / "acquisition.json")
    # label: the lists handed to the oracle, every list asked about, those left out, the labels
    chosen = property(lambda self: self.folder / "chosen.jsonl")
    judged = property(lambda self: self.folder / "labels.partial.jsonl")
    asked = property(lambda self: self.folder / "asked.json")
    left_out = property(lambda self: self.folder / "labels.left_out.json")
    labels = property(lambda self: self.folder / "labels.jsonl")
    # train
    data = property(lambda self: self.folder / "data.jsonl")
    pairs = property(lambda self: self.folder / "pairs.json")
    train_dir = property(lambda self: self.folder / "train")
    trained_model = property(lambda self: self.folder / "train" / "model")
    train_skipped = property(lambda self: self.folder / "train.skipped")
    # evaluate: the whole `prefopt eval` result, its held-out answers, and the numbers kept
    eval_result = property(lambda self: self.folder / "eval.full.json")
    # named by `prefopt eval`
    heldout_answers = property(lambda self: self.folder / "eval.full.model.jsonl")
    eval = property(lambda self: self.folder / "eval.json")
