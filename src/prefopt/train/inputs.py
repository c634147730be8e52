"""What a run reads: its data, loaded, split and tokenized, and what one process keeps between
runs that share a model and data (a Reuse)."""

from __future__ import annotations

import dataclasses

from prefopt.data import TokenizeSettings, load_records, split_by_prompt, tokenize_records
from prefopt.engine.model import ModelCache, load_tokenizer
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
)


def load_data(config: RunSettings, tokenizer, say):
    loaded = load_records(config.data, skip_invalid=config.skip_invalid, columns=config.columns)
    say(loaded.summary())
    if config.eval_data:
        eval_loaded = load_records(
            config.eval_data, skip_invalid=config.skip_invalid, columns=config.columns
        )
        say(eval_loaded.summary())
        train_records, eval_records = loaded.records, eval_loaded.records
    else:
        train_records, eval_records = split_by_prompt(
            loaded.records, config.eval_fraction, config.seed
        )
    settings = TokenizeSettings(
        config.max_prompt_tokens,
        config.max_completion_tokens,
        config.prompt_truncation,
        config.chat_template,
    )
    train_data, counts = tokenize_records(train_records, tokenizer, settings)
    eval_data, _ = tokenize_records(eval_records, tokenizer, settings)
    sizes = sorted({len(e.completion_ids) for e in train_data})
    say(
        f"data: {len(train_data)} train lists, {len(eval_data)} eval lists (split by prompt), "
        f"K = {'/'.join(map(str, sizes))}; {counts.summary()}"
    )
    return train_data, eval_data


def reused_data(config: RunSettings, tokenizer, say, reuse: Reuse):
    key = repr([getattr(config, name) for name in DATA_SETTINGS])
    if key in reuse.data:
        reuse.hits["data"] += 1
        train_data, eval_data = reuse.data[key]
        say(
            f"data: {len(train_data)} train lists, {len(eval_data)} eval lists, as tokenized for an earlier run"
        )
    else:
        reuse.data[key] = load_data(config, tokenizer, say)
    return reuse.data[key]
