"""A LoRA run under bf16 autocast holds its frozen base weights in bf16: the same losses bit for
bit as with them in float32, the saved models the same bit for bit (their float32 values read back
from disk), and a model folder changed during the run is named instead of saved."""

import io
import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from prefopt.engine.frozen import keep_frozen_in, restore_frozen
from prefopt.engine.model import LoraSettings, load_model
from prefopt.engine.settings import EngineSettings
from prefopt.errors import TrainingError
from prefopt.reward import RewardConfig
from prefopt.reward.run import reward_task
from prefopt.train import train
from prefopt.train.config import TrainConfig
from tiny import toy_rows, write_jsonl

BF16_LORA = dict(
    precision="bf16",
    lora=True,
    batch_size=4,
    epochs=1,
    eval_fraction=0.25,
    warmup_ratio=0.0,
    scheduler="constant",
    learning_rate=1e-3,
)


def losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", toy_rows(24, seed=3))


@pytest.mark.parametrize("task", ["policy", "reward"])
def test_bf16_frozen_weights_train_and_save_the_same_numbers(tiny_model, data, tmp_path, task):
    runs = {}
    for held in (True, False):
        out, log = tmp_path / str(held), io.StringIO()
        settings = dict(model=str(tiny_model), data=str(data), output_dir=str(out), **BF16_LORA)
        if task == "reward":
            config = RewardConfig(**settings)
            train(
                config,
                objective=config.build_objective(),
                task=reward_task(config),
                engine=EngineSettings(frozen_in_bf16=held),
                console=Console(file=log, width=1000),
            )
            saved = out / "model"
        else:
            config = TrainConfig(**settings, merge=True)
            train(
                config,
                engine=EngineSettings(frozen_in_bf16=held),
                console=Console(file=log, width=1000),
            )
            saved = out / "merged"
        assert ("frozen weights held in bf16" in log.getvalue()) == held
        runs[held] = losses(out), tensors(saved)
    (held_losses, held_saved), (plain_losses, plain_saved) = runs[True], runs[False]
    assert len(held_losses) >= 4 and held_losses == plain_losses
    assert held_saved.keys() == plain_saved.keys()
    for name, value in plain_saved.items():
        assert value.dtype == held_saved[name].dtype == torch.float32, name
        assert torch.equal(value, held_saved[name]), name


def test_only_frozen_untied_weights_are_cast_and_all_come_back(tiny_model):
    model = load_model(str(tiny_model), lora=LoraSettings())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cast = keep_frozen_in(model, torch.bfloat16, str(tiny_model))
    assert cast == len([n for n in before if n.endswith("base_layer.weight")]) > 0
    for name, parameter in model.named_parameters():
        assert parameter.dtype == (
            torch.bfloat16 if name.endswith("base_layer.weight") else torch.float32
        ), name
    assert restore_frozen(model) == cast and restore_frozen(model) == 0
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32 and torch.equal(parameter, before[name]), name


def test_a_model_folder_without_safetensors_keeps_float32(tiny_model, tmp_path):
    model = load_model(str(tiny_model), lora=LoraSettings())
    assert keep_frozen_in(model, torch.bfloat16, str(tmp_path)) == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_model_folder_changed_during_the_run_is_named(tiny_model, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    weights = load_file(tiny_model / "model.safetensors")
    save_file(weights, folder / "model.safetensors")
    model = load_model(str(tiny_model), lora=LoraSettings())
    keep_frozen_in(model, torch.bfloat16, str(folder))
    key = "model.layers.0.self_attn.q_proj.weight"
    weights[key] = weights[key] + 1.0
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(
        TrainingError, match=f"model.safetensors: {key} is not the weight this run trained against"
    ):
        restore_frozen(model)
