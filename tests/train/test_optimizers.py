"""The optimizers and schedules a run can choose: each learns the toy task and resumes exactly
(its state checkpointed), with LoRA and full; WSD holds the peak then decays; Muon takes the hidden
matrices and AdamW the rest; a schedule-free run evaluates and saves its averaged weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from prefopt.train import train
from prefopt.train.checkpoint import latest_checkpoint
from prefopt.train.optimizers import OPTIMIZERS, build_optimizer, build_scheduler
from tiny import Crash, crash_at, tiny_train_config, toy_rows, write_jsonl


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", toy_rows(48, seed=1))


def train_lines(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"], row["lr"]) for row in rows if row["split"] == "train"]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("optimizer", [name for name in OPTIMIZERS if name != "adamw"])
def test_each_optimizer_learns_and_resumes_exactly(tiny_model, pairs, tmp_path, optimizer, lora):
    settings = dict(loss="dpo", optimizer=optimizer, lora=lora, lora_r=4, max_steps=6, save_every=2,
                    learning_rate=3e-3 if optimizer != "muon" else 2e-2, batch_size=8,
                    scheduler="wsd", warmup_ratio=0.2, decay_ratio=0.4)  # fmt: skip
    whole = train(tiny_train_config(tiny_model, pairs, tmp_path / "whole", **settings))
    with pytest.raises(Crash):
        train(
            tiny_train_config(tiny_model, pairs, tmp_path / "cut", **settings), on_step=crash_at(5)
        )
    resumed = train(tiny_train_config(tiny_model, pairs, tmp_path / "cut", **settings), resume=True)
    assert train_lines(tmp_path / "whole") == train_lines(tmp_path / "cut")
    weights = [load_file(latest_checkpoint(out) / "trained.safetensors")
               for out in (tmp_path / "whole", tmp_path / "cut")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert resumed.eval_end["loss"] == whole.eval_end["loss"] < whole.eval_start["loss"]


def test_wsd_warms_up_holds_the_peak_and_decays():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler("wsd", optimizer, steps=10, warmup_ratio=0.2, decay_ratio=0.3)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == [0.0, 0.5, 1.0] and rates[2:7] == [1.0] * 5
    assert rates[7] > rates[8] > rates[9] > 0


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    named = [("model.embed_tokens.weight", torch.nn.Parameter(torch.zeros(8, 4))),
             ("model.layers.0.mlp.up_proj.weight", torch.nn.Parameter(torch.zeros(4, 4))),
             ("model.norm.weight", torch.nn.Parameter(torch.zeros(4))),
             ("lm_head.weight", torch.nn.Parameter(torch.zeros(8, 4)))]  # fmt: skip
    optimizer = build_optimizer(
        "muon", named, lr=1e-3, weight_decay=0.0, device="cpu", warmup_steps=0
    )
    groups = {
        group["use_muon"]: {id(p) for p in group["params"]} for group in optimizer.param_groups
    }
    assert groups[True] == {id(named[1][1])}
    assert groups[False] == {id(named[0][1]), id(named[2][1]), id(named[3][1])}
