"""`prefopt score`: an oracle's judgement of every list of a file (`prefopt generate`'s output or
any items with completions), written as data `prefopt train` reads as is. Lists the oracle
abstained on, or whose completions all tie, are left out of the training data and counted by
reason; nothing is dropped in silence."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from prefopt.data import load_records
from prefopt.files import cache_dir, staging_path
from prefopt.oracles.base import ORACLES, ListToJudge, make_oracle
from prefopt.oracles.cache import AnswerCache, judge
from prefopt.registry import registered


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    generations: str = Field(
        ...,
        description="Lists to judge: `prefopt generate` output, or any file with a "
        "prompt and completions.",
    )
    oracle: Annotated[str, registered(ORACLES)] = Field(
        ..., description="A registered oracle: verifier, reward_model, judge or people."
    )
    oracle_options: dict[str, Any] = Field(
        default_factory=dict, description="The oracle's options (--oracle.NAME=VALUE)."
    )
    out: str = Field("scored.jsonl", description="Training data: the lists with scores or ranks.")
    cache: str | None = Field(
        None,
        description="The answer cache (SQLite); default: oracle-answers.sqlite in the "
        "prefopt cache folder. `none` turns it off.",
    )
    cache_sampled: bool = Field(
        False, description="Also cache the answers of an oracle that samples."
    )
    batch_size: int = Field(16, ge=1, description="Lists per oracle call.")


@dataclasses.dataclass
class ScoreResult:
    out: Path
    lists: int
    written: int
    from_cache: int
    left_out: collections.Counter  # reason -> lists
    failures: collections.Counter  # a verifier's exceptions -> completions

    def summary(self) -> str:
        parts = [f"{self.written} of {self.lists} lists scored into {self.out}"]
        if self.from_cache:
            parts.append(f"{self.from_cache} answers from the cache")
        parts += [f"{count} left out: {reason}" for reason, count in sorted(self.left_out.items())]
        return "; ".join(parts)


def answer_cache(path: str | None) -> AnswerCache | None:
    if path == "none":
        return None
    return AnswerCache(path or cache_dir() / "oracle-answers.sqlite")


def score(config: ScoreConfig, *, console: Console | None = None) -> ScoreResult:
    console = console or Console()
    records = load_records(config.generations, require_scores=False).records
    oracle = make_oracle(config.oracle, config.oracle_options)
    if hasattr(oracle, "on_failure"):
        oracle.on_failure = lambda message: console.print(f"[yellow]{message}[/]", highlight=False)
    cache = answer_cache(config.cache)
    out = Path(config.out)
    staging = staging_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    left_out: collections.Counter = collections.Counter()
    written = from_cache = 0
    columns = [
        TextColumn(f"[bold]score ({config.oracle})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    try:
        with (
            staging.open("w", encoding="utf-8") as handle,
            Progress(*columns, console=console) as progress,
        ):
            task = progress.add_task("score", total=len(records))
            for start in range(0, len(records), config.batch_size):
                batch = records[start : start + config.batch_size]
                lists = [
                    ListToJudge(r.prompt, tuple(_text(c) for c in r.completions), r.extra)
                    for r in batch
                ]
                judgements, hits = judge(oracle, lists, cache, cache_sampled=config.cache_sampled)
                from_cache += hits
                for record, item, judgement in zip(batch, lists, judgements, strict=True):
                    if judgement.abstained is not None:
                        left_out[f"the oracle abstained ({judgement.abstained})"] += 1
                    elif judgement.all_tied:
                        left_out["all completions tie"] += 1
                    elif (row := _row(record, item, judgement)) is None:
                        left_out["all distinct completions tie"] += 1
                    else:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                        written += 1
                progress.advance(task, len(batch))
        # atomic: an interrupted run never leaves half a file under the real name
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
        oracle.close()
        if cache is not None:
            cache.close()
    return ScoreResult(
        out,
        len(records),
        written,
        from_cache,
        left_out,
        collections.Counter(getattr(oracle, "failures", {})),
    )


def _text(completion: Any) -> str:
    return (
        completion if isinstance(completion, str) else "\n".join(m["content"] for m in completion)
    )


def _row(record, item: ListToJudge, judgement) -> dict | None:
    """The labelled list as preference data. A policy's samples can repeat: each distinct answer
    is written once, at its first place (a repeat adds no comparison, and training refuses
    identical completions); None when the distinct answers all tie."""
    first = {}
    for i, completion in enumerate(item.completions):
        first.setdefault(completion, i)
    keep = sorted(first.values())
    values = judgement.scores if judgement.scores is not None else judgement.ranks
    if len({values[i] for i in keep}) < 2:
        return None
    row = {
        **record.extra,
        "prompt": record.prompt,
        "completions": [item.completions[i] for i in keep],
    }
    row["scores" if judgement.scores is not None else "ranks"] = [values[i] for i in keep]
    if judgement.details is not None and any(d is not None for d in judgement.details):
        row["judgement"] = [judgement.details[i] for i in keep]
    return row
