"""The SwiGLU of gated MLPs, down(silu(gate(x)) · up(x)), with silu(g) · u as one autograd function.

Left to autograd, the product keeps four [tokens × intermediate] tensors a layer for the backward:
gate's output (for SiLU's backward), SiLU's output and up's (for the product's), and the product
itself (down's input). Here the product's function keeps gate's and up's outputs and recomputes
SiLU in the backward, one elementwise pass: three of the four (SmolLM2-135M, bf16: 3 KB a token and
layer less). The forward and backward are autograd's own ops in the same dtypes and order, so every
number is the same bit for bit (tested, float32 and bf16 autocast).

Only the MLPs of the pre-norm model types of prefopt.engine.norm with a SiLU activation are
switched (Llama's `gate_proj`, `up_proj`, `down_proj` layout)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from prefopt.engine.norm import PRE_NORM_MODELS


class _SiluTimes(torch.autograd.Function):
    """silu(gate) · up, keeping gate and up (not silu(gate)) for the backward."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        # as autograd's MulBackward and SiluBackward compute them
        return torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)


@functools.cache
def _fused_class(mlp_class: type) -> type:
    """A subclass of `mlp_class` (isinstance checks and the state dict stay as they were)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(_SiluTimes.apply(self.gate_proj(x), self.up_proj(x)))

    return type(f"Fused{mlp_class.__name__}", (mlp_class,), {"forward": forward})


def fuse_swiglu(model) -> int:
    """Switch the SiLU-gated MLPs of `model` in place (see the module docstring); returns how many."""
    if getattr(model.config, "model_type", None) not in PRE_NORM_MODELS:
        return 0
    switched = 0
    for module in model.modules():
        parts = all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj"))
        if parts and type(getattr(module, "act_fn", None)).__name__ in ("SiLUActivation", "SiLU"):
            module.__class__ = _fused_class(type(module))
            switched += 1
    return switched
