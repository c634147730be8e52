"""The training loop on a tiny random Llama: invariants (accumulation, K=2 listwise = DPO, resume),
learning on a toy task, failure handling and the saved model."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from prefopt.errors import TrainingError
from prefopt.losses import Objective
from prefopt.train import TrainConfig, train
from prefopt.train.checkpoint import latest_checkpoint
from tiny import Crash, crash_at, on_two_processes, tiny_train_config, toy_rows, write_jsonl


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", toy_rows(48, seed=1))


@pytest.fixture(scope="module")
def lists_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "lists.jsonl", toy_rows(40, seed=2, k=4))


def config(tiny_model, data, out, **overrides):
    return tiny_train_config(
        tiny_model, data, out, **{"loss": "dpo", "lora": False, "max_steps": 4, **overrides}
    )


def trained(out):
    return load_file(latest_checkpoint(out) / "trained.safetensors")


def train_metrics(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == "train"]


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_batch_8_equals_batch_1_with_accumulation_8(tiny_model, pairs_file, tmp_path):
    common = dict(max_steps=3, learning_rate=1e-4, eval_fraction=0.0)
    train(
        config(
            tiny_model,
            pairs_file,
            tmp_path / "a",
            batch_size=8,
            gradient_accumulation_steps=1,
            **common,
        )
    )
    train(
        config(
            tiny_model,
            pairs_file,
            tmp_path / "b",
            batch_size=1,
            gradient_accumulation_steps=8,
            **common,
        )
    )
    for line_a, line_b in zip(
        train_metrics(tmp_path / "a"), train_metrics(tmp_path / "b"), strict=True
    ):
        assert line_a["loss"] == pytest.approx(line_b["loss"], rel=1e-5)
        assert line_a["grad_norm"] == pytest.approx(line_b["grad_norm"], rel=1e-4)
    assert_same_weights(trained(tmp_path / "a"), trained(tmp_path / "b"), atol=1e-6)


def test_k2_listwise_through_the_pipeline_equals_pairwise_dpo(tiny_model, pairs_file, tmp_path):
    train(
        config(
            tiny_model, pairs_file, tmp_path / "dpo", loss="dpo", loss_params={"dpo": {"beta": 0.2}}
        )
    )
    train(
        config(
            tiny_model,
            pairs_file,
            tmp_path / "pl",
            loss="plackett_luce",
            loss_params={"plackett_luce": {"beta": 0.2}},
        )
    )
    for a, b in zip(train_metrics(tmp_path / "dpo"), train_metrics(tmp_path / "pl"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert_same_weights(trained(tmp_path / "dpo"), trained(tmp_path / "pl"), atol=1e-6)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_equals_uninterrupted(tiny_model, pairs_file, tmp_path, lora):
    settings = dict(
        max_steps=6,
        save_every=2,
        lora=lora,
        lora_dropout=0.1,
        lora_r=4,
        scheduler="cosine",
        warmup_ratio=0.2,
        learning_rate=1e-3,
        batch_size=4,
        epochs=1,
    )
    whole = train(config(tiny_model, pairs_file, tmp_path / "whole", **settings))
    with pytest.raises(Crash):
        train(config(tiny_model, pairs_file, tmp_path / "cut", **settings), on_step=crash_at(5))
    assert latest_checkpoint(tmp_path / "cut").name == "step-4"
    resumed = train(config(tiny_model, pairs_file, tmp_path / "cut", **settings), resume=True)
    assert resumed.steps == whole.steps == 6
    assert_same_weights(trained(tmp_path / "whole"), trained(tmp_path / "cut"), atol=0)
    losses = lambda out: [(m["step"], m["loss"]) for m in train_metrics(out)]
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")
    assert resumed.eval_end == pytest.approx(whole.eval_end)
    saved = torch.load(latest_checkpoint(tmp_path / "cut") / "optimizer.pt", weights_only=False)
    # AdamW's one-kernel update, kept across a resume
    assert saved["optimizer"]["param_groups"][0]["fused"]


def test_learns_the_toy_task(tiny_model, pairs_file, tmp_path):
    result = train(
        config(
            tiny_model,
            pairs_file,
            tmp_path / "run",
            max_steps=30,
            batch_size=8,
            loss_params={"dpo": {"beta": 0.5}},
        )
    )
    metrics = train_metrics(tmp_path / "run")
    first, last = metrics[:3], metrics[-3:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
    assert mean(last, "loss") < mean(first, "loss") - 0.1
    assert mean(last, "reward_accuracy") > mean(first, "reward_accuracy")
    # policy = reference: every reward is exactly 0
    assert result.eval_start["reward_accuracy"] == 0.0
    assert result.eval_start["loss"] == pytest.approx(0.6931471806, abs=1e-6)
    assert result.eval_end["reward_accuracy"] > 0.9
    assert result.eval_end["loss"] < result.eval_start["loss"]


@pytest.mark.parametrize(
    ("loss", "params"),
    [
        ("lipo_lambda", {}),
        ("pro", {}),
        ({"plackett_luce": 1.0, "sft": 0.1}, {}),
        ("dft", {}),
        ("orpo", {}),
        ("bco_pair", {}),
        ("aot", {}),
        ("ld_dpo", {}),
        ("wpo", {}),
        ("simpo", {"simpo": {"alpha": 0.25}}),
        ("orpo", {"orpo": {"nll_prompt": True}}),
    ],
)
def test_ranked_lists_with_any_loss(tiny_model, lists_file, tmp_path, loss, params):
    result = train(
        config(
            tiny_model,
            lists_file,
            tmp_path / "run",
            loss=loss,
            loss_params=params,
            max_steps=3,
            lora=True,
        )
    )
    metrics = train_metrics(tmp_path / "run")
    assert len(metrics) == 3 and all(math.isfinite(m["loss"]) for m in metrics)
    assert "kendall_tau" in result.eval_end or "plackett_luce/kendall_tau" in result.eval_end


class _OverflowsAtTrainingCall(Objective):
    """DPO whose n-th training call returns an infinite loss."""

    def __init__(self, n: int):
        self.n, self.training_calls = n, 0
        super().__init__("dpo")

    def __call__(self, batch, *, train=True):
        out = super().__call__(batch, train=train)
        self.training_calls += train
        if train and self.training_calls == self.n:
            return dataclasses.replace(out, loss=out.loss * float("inf"))
        return out


def test_non_finite_loss_stops_with_a_checkpoint(tiny_model, pairs_file, tmp_path):
    settings = config(tiny_model, pairs_file, tmp_path / "run", max_steps=10)
    with pytest.raises(
        TrainingError, match=r"step 4: the loss is (nan|inf).*last good state is saved in .*step-3"
    ):
        train(settings, objective=_OverflowsAtTrainingCall(4))
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint.name == "step-3"
    assert all(
        torch.isfinite(t).all() for t in load_file(checkpoint / "trained.safetensors").values()
    )
    resumed = train(settings, resume=True)
    assert resumed.steps == 10


def test_saved_models_load_with_transformers_alone(tiny_model, pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(config(tiny_model, pairs_file, tmp_path / "full", max_steps=2))
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")
    assert AutoTokenizer.from_pretrained(tmp_path / "full" / "model").chat_template
    assert (tmp_path / "full" / "model" / "model.safetensors").exists()
    assert (tmp_path / "full" / "config.yaml").exists()

    train(
        config(
            tiny_model,
            pairs_file,
            tmp_path / "lora",
            max_steps=2,
            lora=True,
            merge=True,
            learning_rate=1e-2,
        )
    )
    assert (tmp_path / "lora" / "model" / "adapter_config.json").exists()
    adapter = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "merged")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(adapter(ids).logits, merged(ids).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(full(ids).logits, merged(ids).logits)


@pytest.mark.slow
def test_two_processes_equal_one_with_accumulation(tiny_model, pairs_file, tmp_path):
    """DDP over 2 CPU processes (gloo, started by torchrun): each process takes one micro-batch of
    the step, so the result equals one process accumulating both."""
    import subprocess

    import yaml

    settings = dict(
        model=str(tiny_model),
        data=str(pairs_file),
        loss="dpo",
        lora=False,
        precision="fp32",
        learning_rate=1e-4,
        batch_size=2,
        max_steps=3,
        eval_fraction=0.0,
        scheduler="constant",
        warmup_ratio=0.0,
    )
    (tmp_path / "ddp.yaml").write_text(
        yaml.safe_dump({**settings, "output_dir": str(tmp_path / "ddp")})
    )
    result = subprocess.run(
        on_two_processes("train", str(tmp_path / "ddp.yaml")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    train(TrainConfig(**settings, output_dir=str(tmp_path / "one"), gradient_accumulation_steps=2))
    for a, b in zip(train_metrics(tmp_path / "ddp"), train_metrics(tmp_path / "one"), strict=True):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert_same_weights(trained(tmp_path / "ddp"), trained(tmp_path / "one"), atol=1e-6)


def test_auto_precision_takes_the_best_of_three_readings(monkeypatch):
    """One slow reading of bf16 (a busy moment) must not decide; bf16 without matrix units is read once."""
    import prefopt.engine.precision as model

    readings = {torch.float32: iter([200, 210, 190]), torch.bfloat16: iter([250, 900, 880])}
    monkeypatch.setattr(model, "matmul_gflops", lambda dtype: next(readings[dtype]))
    precision, why = model.choose_precision("auto", torch.device("cpu"))
    assert precision == "bf16" and "bf16 900 vs fp32 210" in why
    # a second bf16 read would raise
    readings = {torch.float32: iter([200, 210, 190]), torch.bfloat16: iter([1])}
    assert model.choose_precision("auto", torch.device("cpu"))[0] == "fp32"


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_runs_that_reuse_the_process_s_data_and_model_train_as_runs_that_do_not(
    tiny_model, pairs_file, tmp_path, lora
):
    """A tuning study's trials: the second and third runs read neither the tokenizer, the data nor
    the model again, and each trains exactly as a run of its own (fresh LoRA adapters; full
    fine-tuning from the weights on disk, not the first run's trained ones)."""
    from prefopt.train import Reuse

    settings = dict(max_steps=3, lora=lora, lora_r=4, learning_rate=1e-3, batch_size=4)
    reuse = Reuse()
    for name, lr in [("a", 1e-3), ("b", 3e-3), ("c", 1e-3)]:
        train(
            config(
                tiny_model,
                pairs_file,
                tmp_path / f"reused-{name}",
                **{**settings, "learning_rate": lr},
            ),
            reuse=reuse,
        )
    alone = train(config(tiny_model, pairs_file, tmp_path / "alone", **settings))
    assert reuse.hits == {"tokenizer": 2, "data": 2} and len(reuse.models) == 1
    for name in "ac":  # the first run and one after another run's training
        assert_same_weights(
            trained(tmp_path / f"reused-{name}"), trained(tmp_path / "alone"), atol=0
        )
        assert json.loads(
            (tmp_path / f"reused-{name}" / "metrics.jsonl").read_text().splitlines()[-1]
        ) == json.loads((tmp_path / "alone" / "metrics.jsonl").read_text().splitlines()[-1])
    assert alone.steps == 3


def test_inpo_reads_a_second_fixed_reference(tiny_model, pairs_file, tmp_path):
    """INPO's three log-probs: the policy, the reference (its previous iterate) and anchor_model
    (π_ref). Anchored at the model itself, h = 0 at the start, so the loss is (η/2)² exactly; a
    different anchor moves it, and the run learns either way."""
    from tiny import build_tiny_model

    params = {"inpo": {"eta": 1.0, "tau": 0.1}}
    same = train(
        config(
            tiny_model,
            pairs_file,
            tmp_path / "same",
            loss="inpo",
            loss_params=params,
            anchor_model=str(tiny_model),
            max_steps=6,
            learning_rate=1e-4,
        )
    )
    assert same.eval_start["loss"] == pytest.approx(0.25, abs=1e-5) and same.eval_end["loss"] < 0.25
    saved = torch.load(tmp_path / "same" / "anchor_logps.pt")
    # every pair, the held-out ones too
    assert saved["train"].shape[0] + saved["eval"].shape[0] == 48
    other = build_tiny_model(tmp_path / "other", seed=1)
    moved = train(
        config(
            tiny_model,
            pairs_file,
            tmp_path / "moved",
            loss="inpo",
            loss_params=params,
            anchor_model=str(other),
            max_steps=1,
        )
    )
    assert moved.eval_start["loss"] != pytest.approx(0.25, abs=1e-3)
    with pytest.raises(ValueError, match="anchor_model: the loss reads a second reference"):
        config(tiny_model, pairs_file, tmp_path / "none", loss="inpo", loss_params=params)
