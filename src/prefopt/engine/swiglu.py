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

from prefopt.engine.lora import FusedLoraLinear
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


class _LoraSwiGLU(torch.autograd.Function):
    """down(silu(gate(x)) · up(x)) for three LoRA linears with frozen bias-free bases, y = x·Wᵀ +
    s·(x·Aᵀ)·Bᵀ each, in the compute dtype `dtype` (the forward is FusedLoraLinear's ops, the same
    numbers). It keeps x, gate's and up's outputs and the three rank-r products (x·Aᵀ, h·A_dᵀ);
    down's input h = silu(g)·u is recomputed in the backward instead of kept (SmolLM2-135M: 3 KB a
    token and layer). In the backward, h's gradient is one GEMM accumulating down's base and
    adapter paths in place, and x's is one GEMM over [dg, du, dg·B_g, du·B_u] against
    [W_g; W_u; s·A_g; s·A_u], where autograd adds four products after rounding each."""

    @staticmethod
    def forward(ctx, x, dtype, scales, *weights):
        w_gate, w_up, w_down, a_gate, b_gate, a_up, b_up, a_down, b_down = (
            w.to(dtype) for w in weights
        )
        rows = x.reshape(-1, x.shape[-1]).to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            gate, down_gate = _lora_linear(rows, w_gate, a_gate, b_gate, scales[0])
            up, down_up = _lora_linear(rows, w_up, a_up, b_up, scales[1])
            hidden = F.silu(gate) * up
            out, down_down = _lora_linear(hidden, w_down, a_down, b_down, scales[2])
        ctx.save_for_backward(rows, gate, up, down_gate, down_up, down_down, *weights)
        ctx.dtype, ctx.scales, ctx.shape, ctx.input_dtype = dtype, scales, x.shape, x.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        rows, gate, up, down_gate, down_up, down_down, *weights = ctx.saved_tensors
        w_gate, w_up, w_down, a_gate, b_gate, a_up, b_up, a_down, b_down = (
            w.to(ctx.dtype) for w in weights
        )
        s_gate, s_up, s_down = ctx.scales
        grad = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        with torch.autocast(grad.device.type, enabled=False):
            silu = F.silu(gate)
            hidden = silu * up
            through_b = grad @ b_down
            grad_a_down, grad_b_down = (
                (through_b.T @ hidden).mul_(s_down),
                (grad.T @ down_down).mul_(s_down),
            )
            grad_hidden = (grad @ w_down).addmm_(through_b, a_down, alpha=s_down)
            inner, rank_gate = gate.shape[1], a_gate.shape[0]
            stacked = grad_hidden.new_empty(rows.shape[0], 2 * inner + rank_gate + a_up.shape[0])
            grad_gate, grad_up = stacked[:, :inner], stacked[:, inner : 2 * inner]
            torch.ops.aten.silu_backward.grad_input(grad_hidden * up, gate, grad_input=grad_gate)
            torch.mul(grad_hidden, silu, out=grad_up)
            through_gate, through_up = (
                stacked[:, 2 * inner : 2 * inner + rank_gate],
                stacked[:, 2 * inner + rank_gate :],
            )
            torch.mm(grad_gate, b_gate, out=through_gate)
            torch.mm(grad_up, b_up, out=through_up)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (stacked @ torch.cat([w_gate, w_up, a_gate * s_gate, a_up * s_up])).view(
                    ctx.shape
                )
            grads = (
                (through_gate.T @ rows).mul_(s_gate),
                (grad_gate.T @ down_gate).mul_(s_gate),
                (through_up.T @ rows).mul_(s_up),
                (grad_up.T @ down_up).mul_(s_up),
                grad_a_down,
                grad_b_down,
            )
        grad_x = None if grad_x is None else grad_x.to(ctx.input_dtype)
        adapters = (g.to(w.dtype) for g, w in zip(grads, weights[3:], strict=True))
        return grad_x, None, None, None, None, None, *adapters


def _lora_linear(rows, weight, a, b, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FusedLoraLinear's forward on 2-D rows in one dtype: rows·Wᵀ + s·(rows·Aᵀ)·Bᵀ, and rows·Aᵀ."""
    down = rows @ a.T
    return (rows @ weight.T).addmm_(down, b.T, alpha=scale), down


def _lora_parts(mlp, x: torch.Tensor):
    """(dtype, scales, weights) for `_LoraSwiGLU` when gate, up and down are each one plain LoRA
    adapter on a frozen bias-free base (prefopt.engine.lora) and the settings allow it, else None."""
    layers = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    if not getattr(mlp, "prefopt_lora_mlp", False) or not all(
        type(layer) is FusedLoraLinear for layer in layers
    ):
        return None
    names = [layer._plain_adapter(x, (), {}) for layer in layers]
    if None in names or any(
        layer.base_layer.bias is not None or layer.base_layer.weight.requires_grad
        for layer in layers
    ):
        return None
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    weights = [layer.base_layer.weight for layer in layers]
    for layer, name in zip(layers, names, strict=True):
        weights += [layer.lora_A[name].weight, layer.lora_B[name].weight]
    return (
        dtype,
        tuple(layer.scaling[name] for layer, name in zip(layers, names, strict=True)),
        weights,
    )


@functools.cache
def _fused_class(mlp_class: type) -> type:
    """A subclass of `mlp_class` (isinstance checks and the state dict stay as they were)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = _lora_parts(self, x)
        if lora is not None:
            dtype, scales, weights = lora
            return _LoraSwiGLU.apply(x, dtype, scales, *weights)
        return self.down_proj(_SiluTimes.apply(self.gate_proj(x), self.up_proj(x)))

    return type(f"Fused{mlp_class.__name__}", (mlp_class,), {"forward": forward})


def fuse_swiglu(model, lora: bool = True) -> int:
    """Switch the SiLU-gated MLPs of `model` in place (see the module docstring); returns how many.
    With `lora`, MLPs whose three linears become plain LoRA linears later take `_LoraSwiGLU`."""
    if getattr(model.config, "model_type", None) not in PRE_NORM_MODELS:
        return 0
    switched = 0
    for module in model.modules():
        parts = all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj"))
        if parts and type(getattr(module, "act_fn", None)).__name__ in ("SiLUActivation", "SiLU"):
            module.__class__ = _fused_class(type(module))
            module.prefopt_lora_mlp = lora
            switched += 1
    return switched
