"""peft's LoRA linear with the adapter's output summed into the base output inside one GEMM.

peft computes `base(x) + lora_B(lora_A(x)) * scaling`: two extra passes over the [tokens × out]
output in the forward (the scaling, the sum) and one in the backward. Here
`base(x).addmm_(lora_A(x), lora_Bᵀ, alpha=scaling)` accumulates into the base output in place (a
linear layer does not save its output for the backward, so autograd allows it). Under autocast the
sum runs in the autocast dtype: peft casts the input back to the adapter's float32 for autocast to
cast it down again, two copies of the input and a third pass over the output (docs/performance.md
has what that costs). Same parameters, state dict and peft API; anything but one plain adapter
(several adapters, dropout, adapter biases, DoRA and other variants, mixed dtypes without autocast)
takes peft's own forward."""

from __future__ import annotations

import contextlib

import torch
from peft.tuners.lora.layer import Linear
from peft.tuners.tuners_utils import BaseTunerLayer


class FusedLoraLinear(Linear):
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._plain_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        # 2-D throughout: an in-place op on a view costs copies in the backward
        rows = x.reshape(-1, x.shape[-1])
        result = self.base_layer(rows)
        down = self.lora_A[name](rows)  # under autocast both come out in its dtype
        result.addmm_(down, self.lora_B[name].weight.T.to(result.dtype), alpha=self.scaling[name])
        return result.view(*x.shape[:-1], result.shape[-1])

    def _plain_adapter(self, x: torch.Tensor, args, kwargs) -> str | None:
        """The adapter's name when this forward is one vanilla adapter in one dtype, else None."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        plain = (
            name in self.lora_A
            and name not in self.lora_variant
            and self.lora_B[name].bias is None
            and isinstance(self.lora_dropout[name], torch.nn.Identity)
        )
        if not plain:
            return None
        adapters = {self.lora_A[name].weight.dtype, self.lora_B[name].weight.dtype}
        base = self.base_layer.weight.dtype
        if torch.is_autocast_enabled(
            x.device.type
        ):  # autocast casts inputs and weights to one dtype
            # a frozen base may be held in that dtype already (prefopt.engine.frozen)
            plain = adapters == {torch.float32} and base in (
                torch.float32,
                torch.get_autocast_dtype(x.device.type),
            )
            return name if plain else None
        return name if adapters | {base} == {x.dtype} else None


def fuse_lora_sums(model) -> int:
    """Switch every plain peft LoRA linear of `model` to FusedLoraLinear (in place); returns how many."""
    switched = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = FusedLoraLinear
            switched += 1
    return switched


@contextlib.contextmanager
def adapters_off(model):
    """The base model's outputs: every LoRA layer skips its adapters. Unlike peft's
    `disable_adapter`, which the trainable flags of the adapters follow, this leaves them as they
    are: FSDP gathers a sharded weight with the flag it had when first gathered."""
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    before = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, state in zip(layers, before, strict=True):
            layer._disable_adapters = state
