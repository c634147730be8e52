"""Rewards of K completions per prompt from a sequence-classification model with a scalar head:
one packed row per list [prompt, c1, …, cK] (the log-prob engine's layout and attention), the
reward of each completion read at its last token. No LM head is computed at all."""

from __future__ import annotations

import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.engine.attention import SEGMENT_ATTENTION
from prefopt.engine.logps import collate
from prefopt.engine.settings import EngineSettings


def reward_head(model) -> torch.nn.Module:
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(f"{type(model).__name__} has no scalar reward head (a `score` linear layer with one "
                         "output): is it a sequence-classification model with num_labels = 1?")
    return head


def completion_rewards(model, examples: list[TokenizedList], pad_id: int, settings: EngineSettings | None = None,
                       pad_multiple: int = 16) -> torch.Tensor:
    """[B, K_max] rewards (0 past a list's K), in float32; grad follows the caller's mode."""
    batch = collate(examples, list(range(len(examples))), pad_id, share_prompt=True, pad_multiple=pad_multiple)
    decoder = getattr(model, model.base_model_prefix)
    kwargs = {"position_ids": batch.position_ids}
    if decoder.config._attn_implementation == SEGMENT_ATTENTION:
        kwargs |= {"prefopt_segments": batch.layout, "prefopt_engine": settings or EngineSettings()}
    device = next(model.parameters()).device
    hidden = decoder(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                     **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                     ).last_hidden_state
    rows = [b for b, (_, ends) in enumerate(batch.layout) for _ in ends]
    last_tokens = [end - 1 for _, ends in batch.layout for end in ends]
    values = reward_head(model)(hidden[rows, last_tokens]).float().squeeze(-1)
    rewards = torch.zeros(batch.mask.shape, dtype=torch.float32, device=device)
    items = [k for _, ends in batch.layout for k in range(len(ends))]
    return rewards.index_put((torch.tensor(rows, device=device), torch.tensor(items, device=device)), values)
