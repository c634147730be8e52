"""What a run reads: its data, loaded, split and tokenized, and what one process keeps between
runs that share a model and data (a Reuse)."""

from __future__ import annotations

import dataclasses

from prefopt.data import TokenizeSettings, load_records, split_by_prompt, tokenize_records
from prefopt.data.feedback import (
    balance_warning,
    scored_answers,
    single_answers,
    verdict_counts,
    with_mismatched,
)
from prefopt.engine.model import ModelCache, load_tokenizer
from prefopt.losses import Objective
from prefopt.train.config import RunSettings


@dataclasses.dataclass
class Reuse:
    """What one process keeps between runs that share a model and data (the trials of a tuning
    study, the loop's rounds): tokenizers by model, tokenized data by every setting that changes it,
    and the models as read from disk (a ModelCache). A run with it trains exactly as one without.
    `hits` counts what was reused."""

    tokenizers: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    models: ModelCache = dataclasses.field(default_factory=ModelCache)
    # also keep each run's saved model, as read from its folder (the loop reads it next)
    keep_trained: bool = False
    hits: dict[str, int] = dataclasses.field(default_factory=lambda: {"tokenizer": 0, "data": 0})

    def tokenizer(self, spec: str):
        if spec in self.tokenizers:
            self.hits["tokenizer"] += 1
        else:
            self.tokenizers[spec] = load_tokenizer(spec)
        return self.tokenizers[spec]


DATA_SETTINGS = (
    "model",
    "data",
    "eval_data",
    "eval_fraction",
    "seed",
    "skip_invalid",
    "columns",
    "max_prompt_tokens",
    "max_completion_tokens",
    "prompt_truncation",
    "chat_template",
    "desirable_rating",
)


def load_data(config: RunSettings, tokenizer, say, objective: Objective | None = None):
    """The train and eval lists, tokenized; for an objective over single answers, each answer a
    list of its own (with a mismatched answer after it where the objective reads one)."""
    singles = None if objective is None else objective.single_answers
    unpaired = singles is not None
    read = lambda source: load_records(source, skip_invalid=config.skip_invalid,
                                       columns=config.columns, single_answers=unpaired)  # fmt: skip
    loaded = read(config.data)
    say(loaded.summary())
    if config.eval_data:
        eval_loaded = read(config.eval_data)
        say(eval_loaded.summary())
        train_records, eval_records = loaded.records, eval_loaded.records
    else:
        train_records, eval_records = split_by_prompt(
            loaded.records, config.eval_fraction, config.seed
        )
    if singles == "scores":
        train_records, eval_records = scored_answers(train_records), scored_answers(eval_records)
    elif singles == "verdicts":
        train_records = single_answers(train_records, config.desirable_rating)
        eval_records = single_answers(eval_records, config.desirable_rating)
        _say_balance(objective, verdict_counts(train_records), say)
    settings = TokenizeSettings(
        config.max_prompt_tokens,
        config.max_completion_tokens,
        config.prompt_truncation,
        config.chat_template,
    )
    train_data, counts = tokenize_records(train_records, tokenizer, settings)
    eval_data, _ = tokenize_records(eval_records, tokenizer, settings)
    if unpaired and "mismatched" in objective.needs:
        train_data, eval_data = with_mismatched(train_data), with_mismatched(eval_data, train_data)
    sizes = sorted({len(e.completion_ids) for e in train_data})
    say(
        f"data: {len(train_data)} train lists, {len(eval_data)} eval lists (split by prompt), "
        f"K = {'/'.join(map(str, sizes))}; {counts.summary()}"
    )
    return train_data, eval_data


def _say_balance(objective: Objective, counts: tuple[int, int], say) -> None:
    desirable, undesirable = counts
    say(f"data: {desirable} desirable and {undesirable} undesirable single answers")
    if isinstance(objective, Objective) and "kto" in objective.weights:
        params = objective.params.get("kto", {})
        weights = (params.get("desirable_weight", 1.0), params.get("undesirable_weight", 1.0))
        warning = balance_warning(desirable, undesirable, weights)
        if warning:
            say(f"[yellow]warning:[/] {warning}")


def reused_data(
    config: RunSettings, tokenizer, say, reuse: Reuse, objective: Objective | None = None
):
    layout = objective is not None and (objective.single_answers, "mismatched" in objective.needs)
    key = repr([getattr(config, name) for name in DATA_SETTINGS] + [layout])
    if key in reuse.data:
        reuse.hits["data"] += 1
        train_data, eval_data = reuse.data[key]
        say(
            f"data: {len(train_data)} train lists, {len(eval_data)} eval lists, as tokenized for an earlier run"
        )
    else:
        reuse.data[key] = load_data(config, tokenizer, say, objective)
    return reuse.data[key]
