"""Rewards of K completions per prompt from a sequence-classification model with a scalar head:
one packed row per list [prompt, c1, …, cK] (the log-prob engine's layout and attention), the
reward of each completion read at its last token. No LM head is computed at all."""

from __future__ import annotations

import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.engine.attention import SEGMENT_ATTENTION, segments_as_tensor
from prefopt.engine.logps import Collated, CompletionLogps, collate
from prefopt.engine.settings import EngineSettings


def reward_head(model) -> torch.nn.Module:
    """The scalar head (`score`), also when PEFT wraps it to train a copy of it."""
    head = getattr(model, "score", None)
    linear = getattr(head, "original_module", head)  # PEFT's ModulesToSaveWrapper keeps the original
    if not isinstance(linear, torch.nn.Linear) or linear.out_features != 1:
        raise ValueError(f"{type(model).__name__} has no scalar reward head (a `score` linear layer with one "
                         "output): is it a sequence-classification model with num_labels = 1?")
    return head


def _unwrapped(model):
    """The transformers model under PEFT's wrappers (whose attribute lookups reach another `.model`)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def batch_rewards(model, batch: Collated, settings: EngineSettings | None = None) -> torch.Tensor:
    """[B, K] rewards of a collated batch (0 for padding items), float32; grad follows the caller's
    mode. A completion's reward is the head on the hidden state of its last token, packed or not."""
    model = _unwrapped(model)
    decoder = getattr(model, model.base_model_prefix)
    kwargs = {"position_ids": batch.position_ids} if batch.position_ids is not None else {}
    if batch.layout is not None and decoder.config._attn_implementation == SEGMENT_ATTENTION:
        kwargs |= {"prefopt_segments": segments_as_tensor(batch.layout), "prefopt_engine": settings or EngineSettings()}
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs).last_hidden_state
    b, k = batch.lengths.shape
    items = batch.mask.flatten().nonzero().squeeze(-1)
    rows, positions = batch.last_tokens[items].unbind(-1)
    values = reward_head(model)(hidden[rows, positions]).float().squeeze(-1)
    rewards = torch.zeros(b * k, dtype=torch.float32, device=hidden.device).index_put((items,), values)
    return rewards.view(b, k)


class RewardEngine(torch.nn.Module):
    """The reward engine as a module (accelerate wraps the call that runs): batch -> rewards in the
    log-prob engine's result type, so that a training run reads both alike (`logps` holds the
    rewards; the reward objectives know it)."""

    def __init__(self, model, settings: EngineSettings | None = None):
        super().__init__()
        self.model = model
        self.settings = settings or EngineSettings()

    def forward(self, batch: Collated) -> CompletionLogps:
        return CompletionLogps(logps=batch_rewards(self.model, batch, self.settings),
                               lengths=batch.lengths.to(torch.float32))


def completion_rewards(model, examples: list[TokenizedList], pad_id: int, settings: EngineSettings | None = None,
                       pad_multiple: int = 16) -> torch.Tensor:
    """[B, K_max] rewards of tokenized lists (0 past a list's K), in float32."""
    batch = collate(examples, list(range(len(examples))), pad_id, share_prompt=True, pad_multiple=pad_multiple)
    return batch_rewards(model, batch.to(next(model.parameters()).device), settings)
