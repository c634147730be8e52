"""FSDP2 through accelerate on two CPU processes (gloo, `accelerate launch` with the FSDP recipe of
examples/accelerate): each process takes one micro-batch of a step, so the run reaches the gradients and
final weights of one process accumulating both; its checkpoints are sharded and a run resumed
from one reaches the uninterrupted run's weights."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from prefopt.reward import RewardConfig, reward_train
from prefopt.train import TrainConfig, train
from tiny import free_port, toy_rows, write_jsonl

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", toy_rows(24, seed=1))


def launch(tmp_path, command: str, settings: dict, *extra: str) -> None:
    """`command` on two CPU processes, launched as docs/scaling.md says, with the FSDP recipe."""
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    launcher = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(launcher), "launch", "--config_file", str(RECIPES / "fsdp.yaml"),
         "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "prefopt.cli",
         *command.split(), str(tmp_path / "run.yaml"), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for path in sorted((out / "model").glob("*.safetensors")):
        weights |= load_file(path)
    return weights


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def grad_norms(out: Path) -> list[float]:
    return [line["grad_norm"] for line in lines(out) if line["split"] == "train"]


def eval_losses(out: Path) -> list[float]:
    return [line["loss"] for line in lines(out) if line["split"] == "eval"]


def assert_same(a: Path, b: Path) -> None:
    assert grad_norms(a) == pytest.approx(grad_norms(b), rel=1e-4)
    assert eval_losses(a) == pytest.approx(eval_losses(b), rel=1e-5)
    first, second = saved_weights(a), saved_weights(b)
    assert first.keys() == second.keys() and first
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sharded_training_equals_one_process_and_resumes_exactly(tiny_model, pairs, tmp_path, lora):
    settings = dict(model=str(tiny_model), data=str(pairs), loss="dpo", lora=lora,
                    precision="fp32", learning_rate=1e-3, batch_size=2, max_steps=3,
                    eval_fraction=0.25, eval_every=1, scheduler="constant", warmup_ratio=0.0,
                    save_every=2, reference_cache=False)  # fmt: skip
    launch(tmp_path, "train", {**settings, "output_dir": str(tmp_path / "fsdp")})
    step_2 = tmp_path / "fsdp" / "checkpoints" / "step-2"
    assert sorted(p.name for p in step_2.iterdir()) == [
        "optimizer.pt", "rng.pt", "sharded", "state.json"
    ]  # fmt: skip
    assert len(list((step_2 / "sharded").glob("*.distcp"))) == 2  # one file per process

    train(TrainConfig(**settings, output_dir=str(tmp_path / "one"), gradient_accumulation_steps=2))
    assert_same(tmp_path / "fsdp", tmp_path / "one")

    # stopped after the checkpoint at step 2: resumed, it reaches the same weights
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed, ignore=shutil.ignore_patterns("model", "step-3"))
    launch(tmp_path, "train", {**settings, "output_dir": str(resumed)}, "--resume")
    assert_same(resumed, tmp_path / "one")


def test_a_sharded_reward_model_equals_one_process(tiny_model, pairs, tmp_path):
    settings = dict(model=str(tiny_model), data=str(pairs), precision="fp32", batch_size=2,
                    max_steps=3, learning_rate=1e-3, eval_fraction=0.0, scheduler="constant",
                    warmup_ratio=0.0)  # fmt: skip
    launch(tmp_path, "reward train", {**settings, "output_dir": str(tmp_path / "fsdp")})
    reward_train(RewardConfig(**settings, output_dir=str(tmp_path / "one"),
                              gradient_accumulation_steps=2))  # fmt: skip
    assert_same(tmp_path / "fsdp", tmp_path / "one")


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_is_a_config_accelerate_reads(recipe):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / recipe))
    launch_line = f"accelerate launch --config_file examples/accelerate/{recipe}"
    assert launch_line in (RECIPES / recipe).read_text()  # the file says how to launch it
    scaling = (RECIPES.parents[1] / "docs" / "scaling.md").read_text()
    assert launch_line in scaling
    if str(config.distributed_type) == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
