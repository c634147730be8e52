"""Sharded training (FSDP2, PyTorch's `fully_shard`) through accelerate.

FSDP is asked for as accelerate asks for it: `accelerate launch` with a config whose
`distributed_type` is FSDP (examples/accelerate/fsdp.yaml), or ACCELERATE_USE_FSDP=true and the
FSDP_* variables under torchrun. On GPUs accelerate turns it on itself. On CPUs it runs the
processes as plain DDP even when FSDP is asked for (its FSDP is offered to GPU-class devices only),
though `fully_shard` runs on CPUs over gloo: `shard_on_cpu` sets the plugin accelerate builds from
the same variables, so that `prepare`, `clip_grad_norm_` and the state dicts shard as on a GPU.

Checkpoints of a sharded run are PyTorch distributed checkpoints (each process writes its shards);
the final model is saved from a copy with the gathered weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes")


def shard_on_cpu(accelerator) -> None:
    """FSDP for CPU processes where FSDP was asked for and accelerate chose DDP."""
    from accelerate import FullyShardedDataParallelPlugin, PartialState
    from accelerate.utils import DistributedType

    if not fsdp_requested() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables, as accelerate reads them
    if plugin.fsdp_version != 2:
        raise ValueError(
            "FSDP on CPU processes is FSDP2 only: set fsdp_version: 2 (FSDP_VERSION=2)"
        )
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def full_weights(module: torch.nn.Module, *, main_only: bool = False) -> dict[str, torch.Tensor]:
    """A sharded `module`'s state dict with every weight whole, on every process (`main_only`: on
    the main process, in CPU memory, and empty elsewhere). Every process takes part."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=main_only)
    return get_model_state_dict(module, options=options)


def unsharded(module: torch.nn.Module, build) -> torch.nn.Module:
    """On the main process, a plain copy of a sharded `module` (`build()` makes one like it) with
    its gathered weights; elsewhere `module` itself. Every process takes part."""
    from accelerate import PartialState

    weights = full_weights(module, main_only=True)
    if not PartialState().is_main_process:
        return module
    copy = build()
    copy.load_state_dict(weights)
    return copy


def _state_dicts(module, optimizer):
    """The trained weights' and the optimizer's state, sharded (frozen weights left out: they are
    the base model's, read from it again)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(module, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def save_sharded(folder: Path, module: torch.nn.Module, optimizer) -> None:
    """The trained weights and the optimizer's state, each process its shards (a collective)."""
    import torch.distributed.checkpoint as dcp

    model, optim = _state_dicts(module, optimizer)
    dcp.save({"model": model, "optimizer": optim}, checkpoint_id=str(folder))


def load_sharded(folder: Path, module: torch.nn.Module, optimizer) -> None:
    """What `save_sharded` wrote, into `module` and `optimizer` (a collective; a trained weight
    missing from the checkpoint fails in `dcp.load`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model, optim = _state_dicts(module, optimizer)
    state = {"model": model, "optimizer": optim}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(module, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))  # fmt: skip
