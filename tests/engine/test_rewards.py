"""The reward engine's last decoder layer computed only at the reward tokens: the same rewards and
gradients as the whole layer (full weights and LoRA, with gradient checkpointing, packed and not),
and its MLP and output projection really see one row per completion."""

import pytest
import torch

from prefopt.engine.logps import collate
from prefopt.engine.model import LoraSettings, load_reward_model
from prefopt.engine.rewards import batch_rewards
from prefopt.engine.settings import EngineSettings
from tiny import build_tiny_reward_model, ragged_examples


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("rm"), tiny_model, seed=3)


def rewards_and_grads(path, examples, pad_id, *, at_rewards: bool, share_prompt=True, **options):
    engine = EngineSettings(last_layer_at_rewards=at_rewards)
    torch.manual_seed(0)  # the same LoRA adapters both ways
    model = load_reward_model(str(path), engine=engine, **options)
    assert model.prefopt_engine.last_layer_at_rewards is at_rewards
    model.train()
    batch = collate(
        examples, list(range(len(examples))), pad_id, share_prompt=share_prompt, pad_multiple=16
    )
    rewards = batch_rewards(model, batch, engine)
    (rewards * torch.arange(1.0, 1 + rewards.numel()).view_as(rewards)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return rewards.detach(), grads, model


@pytest.mark.parametrize(
    "options",
    [{}, {"lora": LoraSettings(r=4)}, {"gradient_checkpointing": True}, {"share_prompt": False}],
    ids=["full", "lora", "checkpointing", "unpacked"],
)
def test_the_last_layer_at_the_rewards_equals_the_whole_layer(reward_model, tokenizer, options):
    examples = ragged_examples(tokenizer)
    whole, whole_grads, _ = rewards_and_grads(
        reward_model, examples, tokenizer.pad_token_id, at_rewards=False, **options
    )
    at_rewards, grads, _ = rewards_and_grads(
        reward_model, examples, tokenizer.pad_token_id, at_rewards=True, **options
    )
    torch.testing.assert_close(at_rewards, whole, rtol=1e-5, atol=1e-6)
    assert grads.keys() == whole_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, whole_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_last_layer_computes_one_row_per_completion(reward_model, tokenizer):
    from prefopt.engine.rewards import last_layer_at_rewards

    examples = ragged_examples(tokenizer)  # 3 + 2 completions
    model = load_reward_model(str(reward_model))
    assert last_layer_at_rewards(model)  # a second time: the same hooks, not another set
    layers = model.model.layers
    seen = {}
    for name, part in {
        "first mlp": layers[0].mlp,
        "last mlp": layers[-1].mlp,
        "last o_proj": layers[-1].self_attn.o_proj,
    }.items():
        part.register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0].shape)
        )
    batch = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=True, pad_multiple=16)
    with torch.no_grad():
        batch_rewards(model, batch)
    assert seen["last mlp"] == seen["last o_proj"] == (5, 64)
    assert seen["first mlp"][:2] == batch.input_ids.shape  # the other layers see every token
    # transformers' own forward (no reward positions given) runs the whole last layer
    with torch.no_grad():
        model(input_ids=batch.input_ids[:1])
    assert seen["last mlp"][:2] == (1, batch.input_ids.shape[1])


def test_a_model_type_outside_the_pre_norm_ones_keeps_its_whole_last_layer(reward_model):
    from prefopt.engine.rewards import last_layer_at_rewards

    model = load_reward_model(str(reward_model), engine=EngineSettings(last_layer_at_rewards=False))
    model.config.model_type = "gemma2"  # a norm after the MLP: not one of the layouts it knows
    assert last_layer_at_rewards(model) is False
