"""Turn records into token ids: the prompt once, each completion's tokens following it exactly.

Chat data is rendered with the model's chat template; the completion is the text the template
adds after the prompt's generation prompt (so its end-of-turn tokens are scored and nothing is
duplicated). Plain strings are tokenized as the model reads them, prompt and completion as one
text (with the tokenizer's BOS, if any, and one EOS): tokenized apart, a prompt that ends inside
what the tokenizer merges with the answer ("Answer: " then "yes") would give tokens the model
never produces, a lone space or half a word. The shared prompt is the longest token prefix common
to all of a list's completions; the rest of each is its completion. Truncation is explicit and
counted."""

from __future__ import annotations

import dataclasses
from typing import Literal

from prefopt.data.records import DataError, PreferenceRecord

ChatTemplate = Literal["auto", "always", "never"]


@dataclasses.dataclass(frozen=True)
class TokenizedList:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[tuple[int, ...], ...]  # sorted best first
    scores: tuple[float, ...]  # non-increasing
    source: str = ""

    @property
    def num_tokens(self) -> int:
        """Tokens of the (prompt + completion) rows, as an unshared forward sees them."""
        return sum(len(self.prompt_ids) + len(c) for c in self.completion_ids)


@dataclasses.dataclass
class TruncationCounts:
    prompts: int = 0
    completions: int = 0
    total_prompts: int = 0
    total_completions: int = 0
    # plain-text lists whose prompt/completion token boundary is not the text's
    boundaries_moved: int = 0

    def summary(self) -> str:
        text = (
            f"truncated {self.prompts}/{self.total_prompts} prompts and "
            f"{self.completions}/{self.total_completions} completions"
        )
        if self.boundaries_moved:
            text += (
                f"; {self.boundaries_moved} plain-text lists have a token spanning the prompt's end"
            )
        return text


@dataclasses.dataclass(frozen=True)
class TokenizeSettings:
    max_prompt_tokens: int | None = 512
    max_completion_tokens: int | None = 512
    prompt_truncation: Literal["keep_end", "keep_start"] = "keep_end"
    chat_template: ChatTemplate = "auto"


def tokenize_records(
    records: list[PreferenceRecord], tokenizer, settings: TokenizeSettings
) -> tuple[list[TokenizedList], TruncationCounts]:
    counts = TruncationCounts()
    return [tokenize_record(r, tokenizer, settings, counts) for r in records], counts


def tokenize_record(
    record: PreferenceRecord,
    tokenizer,
    settings: TokenizeSettings,
    counts: TruncationCounts | None = None,
) -> TokenizedList:
    counts = counts if counts is not None else TruncationCounts()
    use_template = _use_template(record, tokenizer, settings.chat_template)
    if use_template:
        prompt_ids, completions = _chat_ids(record, tokenizer)
    else:
        prompt_ids, completions, moved = _plain_ids(record, tokenizer)
        counts.boundaries_moved += moved
    counts.total_prompts += 1
    limit = settings.max_prompt_tokens
    if limit is not None and len(prompt_ids) > limit:
        counts.prompts += 1
        prompt_ids = (
            prompt_ids[-limit:] if settings.prompt_truncation == "keep_end" else prompt_ids[:limit]
        )
    limited = []
    for ids in completions:
        counts.total_completions += 1
        if settings.max_completion_tokens is not None and len(ids) > settings.max_completion_tokens:
            counts.completions += 1
            ids = ids[: settings.max_completion_tokens]
        if not ids:
            raise DataError("a completion has no tokens", source=record.source, reason="empty text")
        limited.append(tuple(ids))
    # stable: ties keep data order
    order = sorted(range(len(limited)), key=lambda i: -record.scores[i])
    return TokenizedList(
        prompt_ids=tuple(prompt_ids),
        completion_ids=tuple(limited[i] for i in order),
        scores=tuple(record.scores[i] for i in order),
        source=record.source,
    )


def prompt_ids(record: PreferenceRecord, tokenizer, settings: TokenizeSettings) -> list[int]:
    """The prompt's tokens as training renders them (chat template with its generation prompt, or
    plain text with the tokenizer's BOS), truncated as `settings` says: what generation continues."""
    if _use_template(record, tokenizer, settings.chat_template):
        ids = _encode(
            tokenizer,
            tokenizer.apply_chat_template(
                _as_messages(record.prompt, "user"), tokenize=False, add_generation_prompt=True
            ),
            special=False,
        )
    else:
        ids = _encode(tokenizer, record.prompt, special=True)
    limit = settings.max_prompt_tokens
    if limit is not None and len(ids) > limit:
        ids = ids[-limit:] if settings.prompt_truncation == "keep_end" else ids[:limit]
    return ids


def _use_template(record: PreferenceRecord, tokenizer, mode: ChatTemplate) -> bool:
    has_template = getattr(tokenizer, "chat_template", None) is not None
    wanted = mode == "always" or (mode == "auto" and record.is_chat)
    if wanted and not has_template:
        raise DataError(
            "chat data needs a tokenizer with a chat template (this one has none); "
            "set chat_template: never to train on plain text",
            source=record.source,
        )
    return wanted


def _as_messages(text, role: str) -> list[dict]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _chat_ids(record: PreferenceRecord, tokenizer) -> tuple[list[int], list[list[int]]]:
    prompt = _as_messages(record.prompt, "user")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    completions = []
    for completion in record.completions:
        full_text = tokenizer.apply_chat_template(
            prompt + _as_messages(completion, "assistant"), tokenize=False
        )
        if not full_text.startswith(prompt_text):
            raise DataError(
                "the chat template renders the prompt differently once an answer follows, so the "
                "completion boundary is ambiguous",
                source=record.source,
            )
        completions.append(_encode(tokenizer, full_text[len(prompt_text) :], special=False))
    return _encode(tokenizer, prompt_text, special=False), completions


def _plain_ids(record: PreferenceRecord, tokenizer) -> tuple[list[int], list[list[int]], bool]:
    """Prompt + completion tokenized as one text for each completion (one EOS at the end); the
    prompt is their longest common token prefix, leaving every completion at least one token.
    Also whether that boundary differs from the prompt tokenized alone."""
    prompt = (
        record.prompt
        if isinstance(record.prompt, str)
        else "\n".join(m["content"] for m in record.prompt)
    )
    eos = tokenizer.eos_token_id
    joint = []
    for completion in record.completions:
        text = (
            completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
        )
        ids = _encode(tokenizer, prompt + text, special=True)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        joint.append(ids)
    shared = min(len(ids) for ids in joint) - 1
    for n in range(shared):
        if any(ids[n] != joint[0][n] for ids in joint):
            shared = n
            break
    alone = _encode(tokenizer, prompt, special=True)
    if len(joint) == 1:  # one answer (a verdict or a rating): the prompt is what it shares with it
        shared = next((n for n in range(shared) if n >= len(alone) or joint[0][n] != alone[n]),
                      shared)  # fmt: skip
    return joint[0][:shared], [ids[shared:] for ids in joint], joint[0][:shared] != alone


def _encode(tokenizer, text, *, special: bool) -> list[int]:
    if not isinstance(text, str):
        text = "\n".join(m["content"] for m in text)
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])
