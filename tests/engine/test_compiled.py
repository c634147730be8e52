"""engine.compile: the decoder layers under torch.compile give the eager engine's rewards, log-probs
and gradients to float32 rounding, compile once for every row length, and say what is missing when
no C++ compiler is there."""

import random

import pytest
import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.engine.logps import collate, completion_logps
from prefopt.engine.model import LoraSettings, load_model, load_reward_model
from prefopt.engine.rewards import RewardEngine
from prefopt.engine.settings import EngineSettings


def lists(count: int, prompt: int, completion: int, k: int, seed: int) -> list[TokenizedList]:
    rng = random.Random(seed)
    return [
        TokenizedList(
            tuple(rng.randrange(5, 200) for _ in range(prompt + rng.randrange(4))),
            tuple(
                tuple(rng.randrange(5, 200) for _ in range(completion + rng.randrange(6)))
                for _ in range(k)
            ),
            tuple(float(k - j) for j in range(k)),
        )
        for _ in range(count)
    ]


def batch(examples):
    return collate(examples, list(range(len(examples))), 0, share_prompt=True, pad_multiple=8)


def rewards_and_grads(model, examples):
    model.zero_grad(set_to_none=True)
    rewards = RewardEngine(model, model.prefopt_engine.settings)(batch(examples)).logps
    (rewards * torch.arange(1, rewards.shape[1] + 1)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return rewards.detach(), grads


def test_compiled_reward_model_equals_eager_and_compiles_once(tiny_model):
    import torch._dynamo.utils

    torch.manual_seed(0)
    # the adapters of a run's defaults: the compiled run below then finds these graphs in inductor's cache
    eager = load_reward_model(str(tiny_model), lora=LoraSettings(), new_head=True, pad_token_id=0)
    compiled = load_reward_model(
        str(tiny_model),
        lora=LoraSettings(),
        new_head=True,
        pad_token_id=0,
        engine=EngineSettings(compile=True),
    )
    compiled.load_state_dict(eager.state_dict())
    assert compiled.prefopt_engine.compiled_layers == tiny_model_layers(tiny_model)
    graphs = [torch._dynamo.utils.counters["stats"]["unique_graphs"]]
    # a first batch of 3 rows with K = 2 (width 1 + K = 3): the duck sizing engine.compiled turns off
    for examples in (
        lists(3, 12, 8, 2, seed=1),
        lists(2, 20, 5, 4, seed=2),
        lists(4, 30, 11, 3, seed=3),
    ):
        want, want_grads = rewards_and_grads(eager, examples)
        got, got_grads = rewards_and_grads(compiled, examples)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got_grads.keys() == want_grads.keys()
        for name in want_grads:
            torch.testing.assert_close(
                got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5, msg=name
            )
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[1] > graphs[0]  # the first batch compiled the layers
    assert graphs[3] == graphs[2] == graphs[1]  # other lengths, batch sizes and K: no new graph


def test_compiled_policy_log_probs_equal_eager(tiny_model):
    eager = load_model(str(tiny_model))
    compiled = load_model(str(tiny_model), engine=EngineSettings(compile=True))
    examples = lists(3, 10, 7, 3, seed=4)
    with torch.no_grad():
        want = completion_logps(eager, batch(examples)).logps
        got = completion_logps(compiled, batch(examples), compiled.prefopt_engine.settings).logps
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_compile_without_a_cpp_compiler_names_the_setting(tiny_model, monkeypatch):
    import shutil

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="compile: true needs a C\\+\\+ compiler"):
        load_model(str(tiny_model), engine=EngineSettings(compile=True))


def tiny_model_layers(folder) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).num_hidden_layers


def test_a_compiled_run_with_evaluations_stays_compiled(tiny_model, tmp_path):
    """Training and evaluation graphs, the first layer's input without grad and the later ones'
    with: more variants of a layer than dynamo's default limit of 8, past which it would run that
    layer eagerly for the rest of the process."""
    import logging

    from prefopt.reward import RewardConfig, reward_train
    from tiny import toy_rows, write_jsonl

    class LimitHits(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            if "recompile_limit" in record.getMessage():
                self.messages.append(record.getMessage())

    hits = LimitHits()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(hits)
    try:
        data = write_jsonl(tmp_path / "lists.jsonl", toy_rows(32, seed=2, k=4))
        reward_train(
            RewardConfig(
                model=str(tiny_model),
                data=str(data),
                output_dir=str(tmp_path / "run"),
                precision="fp32",
                batch_size=8,
                eval_fraction=0.25,
                epochs=1,
                lora=True,
                compile=True,
            )
        )
    finally:
        logger.removeHandler(hits)
    assert not hits.messages
