"""Preference data: one record type, loaders with precise errors, tokenization, splitting,
batching."""

import random

from prefopt.data.batching import Batching, PlannedStep, padded_length, row_length
from prefopt.data.load import LoadedData, load_records, read_jsonl
from prefopt.data.records import DataError, PreferenceRecord, parse_row
from prefopt.data.tokenize import (
    TokenizedList,
    TokenizeSettings,
    TruncationCounts,
    tokenize_records,
)


def split_by_prompt(
    records: list[PreferenceRecord], fraction: float, seed: int
) -> tuple[list[PreferenceRecord], list[PreferenceRecord]]:
    """Hold out `fraction` of the distinct prompts (never the same prompt on both sides)."""
    prompts = sorted({r.prompt_text for r in records})
    if fraction <= 0 or len(prompts) < 2:
        return records, []
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: max(1, round(fraction * len(prompts)))])
    return [r for r in records if r.prompt_text not in held_out], [
        r for r in records if r.prompt_text in held_out
    ]


__all__ = [
    "Batching",
    "DataError",
    "LoadedData",
    "PlannedStep",
    "PreferenceRecord",
    "TokenizeSettings",
    "TokenizedList",
    "TruncationCounts",
    "load_records",
    "padded_length",
    "parse_row",
    "read_jsonl",
    "row_length",
    "split_by_prompt",
    "tokenize_records",
]
