"""Checkpoints that resume a run exactly: the trained weights (safetensors; with LoRA only the
adapters), optimizer, scheduler, RNG states, loop position and loss state. Written to a
temporary folder and renamed, so an interrupted save never looks like a checkpoint."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prefopt.files import write_atomic
from prefopt.train.sharding import is_sharded, load_sharded, save_sharded

_NAME = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    out_dir: Path,
    module: torch.nn.Module,
    optimizer,
    scheduler,
    state: dict,
    objective_state: dict,
    shards: Path | None = None,
) -> Path:
    """A checkpoint of the run; `shards` is the distributed checkpoint of the trained weights and
    the optimizer that the processes of a sharded run wrote (moved in, as `sharded/`)."""
    target = Path(out_dir) / "checkpoints" / f"step-{state['step']}"

    def save(staging: Path) -> None:
        staging.mkdir(parents=True)
        if shards is None:
            trained = {
                name: p.detach().contiguous().cpu()
                for name, p in module.named_parameters()
                if p.requires_grad
            }
            save_file(trained, staging / "trained.safetensors")
        else:
            os.replace(shards, staging / "sharded")
        torch.save(
            {"scheduler": scheduler.state_dict()}
            | ({"optimizer": optimizer.state_dict()} if shards is None else {}),
            staging / "optimizer.pt",
        )
        torch.save(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            staging / "rng.pt",
        )
        (staging / "state.json").write_text(
            json.dumps({"state": state, "objective": objective_state}, indent=1)
        )

    shutil.rmtree(target, ignore_errors=True)  # a folder is not renamed over another
    return write_atomic(target, save)


def checkpoint_run(
    accelerator, out_dir: Path, module: torch.nn.Module, optimizer, scheduler, state: dict,
    objective_state: dict,
) -> Path:  # fmt: skip
    """Every process's part of a checkpoint of a run (all of them call it): a sharded run's
    processes each write their shards, then the main process the rest."""
    path, shards = Path(out_dir) / "checkpoints" / f"step-{state['step']}", None
    if is_sharded(accelerator):
        shards = path.with_name(f".{path.name}.shards")
        if accelerator.is_main_process:
            shutil.rmtree(shards, ignore_errors=True)
        accelerator.wait_for_everyone()
        save_sharded(shards, module, optimizer)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path = save_checkpoint(out_dir, module, optimizer, scheduler, state, objective_state,
                               shards=shards)  # fmt: skip
    accelerator.wait_for_everyone()
    return path


def latest_checkpoint(out_dir: Path) -> Path | None:
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()
    ]
    return max(found)[1] if found else None


def load_checkpoint(path: Path, module: torch.nn.Module, optimizer, scheduler) -> dict:
    if (path / "sharded").is_dir():  # a sharded run's: every process reads its shards
        load_sharded(path / "sharded", module, optimizer)
    else:
        _load_whole(path, module, optimizer)
    saved = torch.load(path / "optimizer.pt", weights_only=False)
    scheduler.load_state_dict(saved["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def _load_whole(path: Path, module: torch.nn.Module, optimizer) -> None:
    trained = load_file(path / "trained.safetensors")
    expected = {name for name, p in module.named_parameters() if p.requires_grad}
    if set(trained) != expected:
        raise ValueError(
            f"{path}: the checkpoint's trained weights do not match this model and settings "
            f"({len(trained)} saved tensors, {len(expected)} trainable here); was lora or model changed?"
        )
    with torch.no_grad():
        parameters = dict(module.named_parameters())
        for name, value in trained.items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False)["optimizer"])
