"""Rewards of K completions per prompt from a sequence-classification model with a scalar head:
one packed row per list [prompt, c1, …, cK] (the log-prob engine's layout and attention), the
reward of each completion read at its last token. No LM head is computed at all, and the last
decoder layer runs its attention output projection and MLP only at those last tokens."""

from __future__ import annotations

import functools
import math

import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.engine.attention import SEGMENT_ATTENTION, segments_as_tensor
from prefopt.engine.logps import Collated, CompletionLogps, collate
from prefopt.engine.norm import PRE_NORM_MODELS
from prefopt.engine.settings import EngineSettings

# the decoder's keyword that carries the flat token positions read as rewards to the last layer
_REWARD_POSITIONS = "prefopt_reward_positions"
# a plain attribute on a decoder whose last layer has the hooks (never saved with the model)
_HOOKED = "prefopt_last_layer_at_rewards"


def reward_head(model) -> torch.nn.Module:
    """The scalar head (`score`), also when PEFT wraps it to train a copy of it."""
    head = getattr(model, "score", None)
    # PEFT's ModulesToSaveWrapper keeps the original
    linear = getattr(head, "original_module", head)
    if not isinstance(linear, torch.nn.Linear) or linear.out_features != 1:
        raise ValueError(
            f"{type(model).__name__} has no scalar reward head (a `score` linear layer with one "
            "output): is it a sequence-classification model with num_labels = 1?"
        )
    return head


def _unwrapped(model):
    """The transformers model under PEFT's wrappers (whose attribute lookups reach another `.model`)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def batch_rewards(model, batch: Collated, settings: EngineSettings | None = None) -> torch.Tensor:
    """[B, K] rewards of a collated batch (0 for padding items), float32; grad follows the caller's
    mode. A completion's reward is the head on the hidden state of its last token, packed or not."""
    model = _unwrapped(model)
    decoder = getattr(model, model.base_model_prefix)
    b, k = batch.lengths.shape
    items = batch.mask.flatten().nonzero().squeeze(-1)
    rows, positions = batch.last_tokens[items].unbind(-1)
    kwargs = {"position_ids": batch.position_ids} if batch.position_ids is not None else {}
    if batch.layout is not None and decoder.config._attn_implementation == SEGMENT_ATTENTION:
        kwargs |= {
            "prefopt_segments": segments_as_tensor(batch.layout),
            "prefopt_engine": settings or EngineSettings(),
        }
    if getattr(decoder, _HOOKED, False):
        kwargs[_REWARD_POSITIONS] = rows * batch.input_ids.shape[1] + positions
    hidden = decoder(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs
    ).last_hidden_state
    values = reward_head(model)(hidden[rows, positions]).float().squeeze(-1)
    rewards = torch.zeros(b * k, dtype=torch.float32, device=hidden.device).index_put(
        (items,), values
    )
    return rewards.view(b, k)


class _RewardPositions:
    """The flat token positions read as rewards in the current forward of one decoder layer."""

    positions: torch.Tensor | None = None
    leading: tuple[int, ...] = ()  # the [B, L] of the parts' full inputs


def last_layer_at_rewards(model) -> bool:
    """Make the last decoder layer of `model` (a reward model, PEFT-wrapped or not) compute its
    attention output projection and its MLP only at the tokens read as rewards, when
    `batch_rewards` asks; returns whether it could (the pre-norm layers of prefopt.engine.norm).

    Nothing reads the last layer's other outputs: the other tokens' keys and values come from its
    input, so only its query-side work is per token. Each of those parts maps a token to a token,
    so computing it on the reward tokens alone gives their outputs exactly (SmolLM2-135M: 84% of
    one layer's matrix products, 2.8% of a forward's); at the other tokens the layer passes its
    residual stream on. The positions travel as a keyword of the decoder's forward down to
    the attention module, where a hook reads them: inside the layer's own forward, so gradient
    checkpointing's recomputation reads them again."""
    base = _unwrapped(model)
    decoder = getattr(base, base.base_model_prefix)
    if base.config.model_type not in PRE_NORM_MODELS:
        return False
    if getattr(decoder, _HOOKED, False):
        return True  # hooked already: a second set of hooks would gather the gathered rows again
    layer, state = decoder.layers[-1], _RewardPositions()
    layer.self_attn.register_forward_pre_hook(
        functools.partial(_read_positions, state), with_kwargs=True
    )
    for part in (layer.self_attn.o_proj, layer.mlp):
        part.register_forward_pre_hook(functools.partial(_only_at_positions, state))
        part.register_forward_hook(functools.partial(_back_in_place, state))
    setattr(decoder, _HOOKED, True)
    return True


def _read_positions(state: _RewardPositions, module, args, kwargs) -> None:
    # every forward sets them, so none outlives its own
    state.positions = kwargs.get(_REWARD_POSITIONS)


def _only_at_positions(state: _RewardPositions, module, args):
    if state.positions is None:
        return None
    (x,) = args
    state.leading = tuple(x.shape[:-1])
    return (x.reshape(-1, x.shape[-1]).index_select(0, state.positions),)


def _back_in_place(
    state: _RewardPositions, module, args, output: torch.Tensor
) -> torch.Tensor | None:
    """The part's output at the reward tokens, zeros elsewhere, in the [B, L, hidden] shape the
    layer adds to its residual stream."""
    if state.positions is None:
        return None
    full = output.new_zeros(math.prod(state.leading), output.shape[-1]).index_copy(
        0, state.positions, output
    )
    return full.view(*state.leading, -1)


class RewardEngine(torch.nn.Module):
    """The reward engine as a module (accelerate wraps the call that runs): batch -> rewards in the
    log-prob engine's result type, so that a training run reads both alike (`logps` holds the
    rewards; the reward objectives know it)."""

    def __init__(self, model, settings: EngineSettings | None = None):
        super().__init__()
        self.model = model
        self.settings = settings or EngineSettings()

    def forward(self, batch: Collated) -> CompletionLogps:
        return CompletionLogps(
            logps=batch_rewards(self.model, batch, self.settings),
            lengths=batch.lengths.to(torch.float32),
        )


def completion_rewards(
    model,
    examples: list[TokenizedList],
    pad_id: int,
    settings: EngineSettings | None = None,
    pad_multiple: int = 16,
) -> torch.Tensor:
    """[B, K_max] rewards of tokenized lists (0 past a list's K), in float32."""
    batch = collate(
        examples, list(range(len(examples))), pad_id, share_prompt=True, pad_multiple=pad_multiple
    )
    return batch_rewards(model, batch.to(next(model.parameters()).device), settings)
