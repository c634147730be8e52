"""The policy's weights in the precision it decodes fastest in, held apart from the weights it trains.

A decode step multiplies one token a sequence by every weight of the model: on a CPU with bf16
matrix units (AMX) a bf16 weight is several times faster to multiply than a float32 one, but
autocast would cast every float32 weight to bf16 again at every step, which costs more than it
saves (docs/performance.md). So sampling in bf16 reads a copy whose weights *are* bf16: made once,
with LoRA adapters merged into it (no adapter matmuls while decoding either), and refreshed after
the policy's updates by rewriting only what training changes (each adapted weight as W + ΔW, or
every weight for full training). Its numbers are those of the bf16-rounded policy: its log-probs
differ from the float32 training engine's by that rounding (`logp_gap` in `prefopt rl`)."""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from peft.tuners.lora.layer import LoraLayer

_PEFT_PREFIX = "base_model.model."


class DecodeModel:
    """`model`: what samples. In the source's own precision it is the source itself."""

    def __init__(self, source: torch.nn.Module, precision: str):
        self.source, self.precision = source, precision
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.separate = any(p.dtype != dtype for p in source.parameters() if p.is_floating_point())
        if not self.separate:
            self.model = source
            return
        self.adapted = [
            (name.removeprefix(_PEFT_PREFIX), module)
            for name, module in source.named_modules()
            if isinstance(module, LoraLayer)
        ]
        model = copy.deepcopy(source)
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
        self.model = model.to(dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def refresh(self) -> None:
        """Rewrite the copy from the source's current weights (after an optimizer step)."""
        if not self.separate:
            return
        if not self.adapted:
            for mine, theirs in zip(self.model.parameters(), self.source.parameters(), strict=True):
                mine.copy_(theirs)
            return
        for name, layer in self.adapted:  # written anew: `release` may have freed them
            weight = self.model.get_submodule(name).weight
            weight.data = merged_weight(layer).to(weight.dtype)

    def release(self) -> None:
        """Free the copy's adapted weights (nearly all of it) until `refresh` writes them again:
        training, which changes them, needs the memory meanwhile."""
        if not self.separate:
            return
        for name, _ in self.adapted:
            weight = self.model.get_submodule(name).weight
            weight.data = weight.data.new_empty(0)


def merged_weight(layer: LoraLayer) -> torch.Tensor:
    """A LoRA layer's weight as one matrix, W + ΔW of each active adapter (float32)."""
    weight = layer.get_base_layer().weight.float()
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            weight = weight + layer.get_delta_weight(adapter).float()
    return weight


@torch.no_grad()
def checkpoint_weights(model: torch.nn.Module):
    """(name, tensor) of every weight under its name in the transformers checkpoint, LoRA adapters
    merged into their layers: what a sampler holding its own copy of the model (vLLM) loads."""
    adapted = {name.removeprefix(_PEFT_PREFIX): module for name, module in model.named_modules()
               if isinstance(module, LoraLayer)}  # fmt: skip
    for name, parameter in model.named_parameters():
        name = name.removeprefix(_PEFT_PREFIX)
        if ".lora_" in name:
            continue
        layer, _, rest = name.partition(".base_layer.")
        if rest:
            name = f"{layer}.{rest}"
            if rest == "weight":
                yield name, merged_weight(adapted[layer])
                continue
        yield name, parameter.detach()
