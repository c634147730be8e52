"""What `prefopt rl` trains and samples with (the policy, its optimizer, its sampling copy and
reference) and what a step samples (a prompt's group of scored answers)."""

from __future__ import annotations

import dataclasses

import torch

from prefopt.engine.decode_model import DecodeModel
from prefopt.generate.vllm_backend import VllmSampler
from prefopt.processes import Processes
from prefopt.rl.rewards import Scored
from prefopt.train.sharding import full_weights


@dataclasses.dataclass
class Group:
    """A prompt's K sampled answers, their rewards and what each oracle gave them."""

    prompt: int  # index into the prompts
    samples: list
    scored: Scored

    @property
    def rewards(self) -> list[float]:
        return self.scored.rewards


@dataclasses.dataclass
class Policy:
    """The policy being trained and what steps it."""

    accelerator: object
    engine: torch.nn.Module  # the engine module (prepared by accelerate) around the model
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    tokenizer: object
    precision: str
    lora: bool
    decode: DecodeModel  # what samples: the policy, or its copy in the decode precision
    # a sharded (FSDP) policy's plain copy on every process, which `decode` reads
    copy: torch.nn.Module | None = None
    vllm: VllmSampler | None = None  # backend vllm: what samples instead of `decode`
    # full fine-tuning with β > 0: the initial model, frozen (LoRA's is its adapters off)
    reference: torch.nn.Module | None = None
    stale: bool = False  # the policy was updated since `decode` was refreshed

    def plain_model(self):
        """The policy's model with plain (unsharded) weights: a sharded policy's copy, rewritten
        from the gathered weights (every process takes part)."""
        if self.copy is None:
            return self.accelerator.unwrap_model(self.engine).model
        self.copy.load_state_dict(full_weights(self.engine))
        return self.copy.model

    @property
    def processes(self) -> Processes:
        return Processes.of(self.accelerator)
