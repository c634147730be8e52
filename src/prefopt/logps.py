"""Per-completion log-probs of K completions per prompt: the one engine every loss reads from.

The decoder runs once over each (prompt + completion) row; the LM head is applied only at the
positions that predict completion tokens, in chunks that are recomputed in the backward pass, so
the [tokens × vocabulary] logits never exist at once."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prefopt.data.tokenize import TokenizedList


@dataclasses.dataclass
class Collated:
    """B lists flattened into R rows of prompt + completion, right-padded."""

    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, L]
    prompt_lengths: torch.Tensor  # [R]
    completion_lengths: torch.Tensor  # [R]
    item_rows: torch.Tensor  # [B, K] row of each item, −1 for padding items
    scores: torch.Tensor  # [B, K]
    mask: torch.Tensor  # [B, K]
    indices: torch.Tensor  # [B] position of each list in its data set (reference log-prob lookup)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.attention_mask.numel() - self.attention_mask.sum())

    def to(self, device) -> Collated:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def collate(examples: list[TokenizedList], indices: list[int], pad_id: int) -> Collated:
    k_max = max(len(e.completion_ids) for e in examples)
    rows = [(e.prompt_ids, c) for e in examples for c in e.completion_ids]
    length = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, (prompt, completion) in enumerate(rows):
        ids = prompt + completion
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
    item_rows = torch.full((len(examples), k_max), -1, dtype=torch.long)
    scores = torch.zeros((len(examples), k_max))
    row = 0
    for b, e in enumerate(examples):
        k = len(e.completion_ids)
        item_rows[b, :k] = torch.arange(row, row + k)
        scores[b, :k] = torch.tensor(e.scores)
        row += k
    return Collated(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prompt_lengths=torch.tensor([len(p) for p, _ in rows]),
        completion_lengths=torch.tensor([len(c) for _, c in rows]),
        item_rows=item_rows,
        scores=scores,
        mask=item_rows >= 0,
        indices=torch.tensor(indices),
    )


@dataclasses.dataclass
class CompletionLogps:
    logps: torch.Tensor  # [B, K] summed completion log-probs (float32)
    lengths: torch.Tensor  # [B, K] completion token counts
    token_logps: torch.Tensor | None = None  # [B, K, T]
    token_mask: torch.Tensor | None = None  # [B, K, T]


def completion_logps(model, batch: Collated, *, chunk_tokens: int = 1024, with_tokens: bool = False
                     ) -> CompletionLogps:
    """Summed log-probs of every completion of the batch under `model` (grad follows the
    caller's mode). Only completion positions reach the LM head."""
    hidden = _decoder(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    rows, length = batch.input_ids.shape
    positions = torch.arange(length, device=hidden.device).unsqueeze(0)
    start = (batch.prompt_lengths - 1).unsqueeze(1)
    predicts = (positions >= start) & (positions < start + batch.completion_lengths.unsqueeze(1))  # [R, L]
    row_of, position_of = predicts.nonzero(as_tuple=True)
    targets = batch.input_ids[row_of, position_of + 1]
    token_logps = _head_logps(model, hidden[row_of, position_of], targets, chunk_tokens)
    per_row = torch.zeros(rows, dtype=token_logps.dtype, device=hidden.device).index_add(0, row_of, token_logps)
    item_rows = batch.item_rows.clamp(min=0)
    mask = batch.mask
    result = CompletionLogps(
        logps=per_row[item_rows].masked_fill(~mask, 0.0),
        lengths=batch.completion_lengths[item_rows].masked_fill(~mask, 0).to(torch.float32),
    )
    if with_tokens:
        t_max = int(batch.completion_lengths.max())
        offset = position_of - (batch.prompt_lengths[row_of] - 1)
        per_row_tokens = torch.zeros(rows, t_max, dtype=token_logps.dtype, device=hidden.device)
        per_row_tokens = per_row_tokens.index_put((row_of, offset), token_logps)
        token_mask = torch.arange(t_max, device=hidden.device) < batch.completion_lengths.unsqueeze(1)
        result.token_mask = token_mask[item_rows] & mask.unsqueeze(-1)
        result.token_logps = per_row_tokens[item_rows].masked_fill(~result.token_mask, 0.0)
    return result


def _decoder(model):
    decoder = model.get_decoder()
    if decoder is None or decoder is model:
        raise ValueError(f"{type(model).__name__} exposes no decoder body (get_decoder); prefopt needs a "
                         "causal LM with a separate LM head")
    return decoder


def _head_logps(model, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def chunk_logps(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits.gather(-1, t.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    pieces = []
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(chunk_logps, h, t, use_reentrant=False))
        else:
            pieces.append(chunk_logps(h, t))
    if not pieces:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def naive_completion_logps(model, batch: Collated) -> torch.Tensor:
    """Reference implementation for tests: full-sequence logits, log_softmax, mask, sum. [B, K]."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    token_logps = F.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    positions = torch.arange(1, batch.input_ids.shape[1], device=logits.device).unsqueeze(0)
    is_completion = (positions >= batch.prompt_lengths.unsqueeze(1)) & (
        positions < (batch.prompt_lengths + batch.completion_lengths).unsqueeze(1))
    per_row = (token_logps * is_completion).sum(1)
    return per_row[batch.item_rows.clamp(min=0)].masked_fill(~batch.mask, 0.0)


class CompletionLogpsModel(torch.nn.Module):
    """The engine as a module around a causal LM, so that accelerate (DDP, FSDP, autocast) wraps
    the call that really runs: batch -> CompletionLogps."""

    def __init__(self, model, *, chunk_tokens: int = 1024, with_tokens: bool = False):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.with_tokens = with_tokens

    def forward(self, batch: Collated) -> CompletionLogps:
        return completion_logps(self.model, batch, chunk_tokens=self.chunk_tokens, with_tokens=self.with_tokens)
