"""The RMSNorms of pre-norm decoder layers as one autograd function.

transformers' RMSNorm, `weight · x / sqrt(mean(x²) + ε)`, is five elementwise ops whose autograd
keeps float32 copies of its intermediates, and under autocast its float32 output is cast to
bf16 again by every linear that reads it (q, k and v; gate and up; and each LoRA A beside them:
up to ten casts of the same tensor a layer, each kept for the backward). Here the forward is a
norm, one multiply and one multiply written straight in the autocast dtype, keeping only the
input and one number a row; the backward is four passes. Under autocast the linears then get
bf16 values identical to what they cast themselves, so the forward's numbers do not change;
float32 runs differ from transformers' by float32 rounding of the mean (≤ 1e-6 relative).

Only the norms whose output goes straight into linear layers are switched: `input_layernorm`
and `post_attention_layernorm` of the pre-norm decoder layers of the model types below, and the
final `norm` under the LM head. Any other input (bf16, a weight that is not float32) takes the
module's own forward."""

from __future__ import annotations

import functools

import torch

# model types whose decoder layers normalise their input before attention and MLP (a norm after
# them, as in OLMo 2 or Gemma, feeds the residual stream and must stay float32)
PRE_NORM_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3"})
_NORM_NAMES = ("input_layernorm", "post_attention_layernorm")


class _RMSNorm(torch.autograd.Function):
    """y = w · x · r with r = 1 / sqrt(mean(x²) + ε) per row, written in `dtype`.
    dy/dx: with g' = g · w, dx = r · g' − x · r³ · mean(g' · x); dw = Σ_rows g · x · r."""

    @staticmethod
    def forward(ctx, hidden, weight, eps: float, dtype):
        inverse_rms = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True)
        inverse_rms = inverse_rms.square_().div_(hidden.shape[-1]).add_(eps).rsqrt_()
        out = torch.empty_like(hidden, dtype=dtype)
        # float32 products, one rounding to `dtype`
        torch.mul(hidden * inverse_rms, weight, out=out)
        ctx.save_for_backward(hidden, weight, inverse_rms)
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, inverse_rms = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * hidden).mul_(inverse_rms).sum(dim=tuple(range(hidden.dim() - 1)))
        weighted = torch.mul(grad, weight)  # float32 whatever the dtype of grad
        correction = torch.linalg.vecdot(weighted, hidden).unsqueeze(-1)
        correction = inverse_rms.pow(3).mul_(correction).div_(-hidden.shape[-1])
        grad_hidden = weighted.mul_(inverse_rms).addcmul_(hidden, correction)
        return grad_hidden, grad_weight, None, None


@functools.cache
def _fused_class(norm_class: type) -> type:
    """A subclass of `norm_class` (isinstance checks and the state dict stay as they were)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return norm_class.forward(self, hidden)
        device = hidden.device.type
        dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        )
        return _RMSNorm.apply(hidden, self.weight, self.variance_epsilon, dtype)

    return type(f"Fused{norm_class.__name__}", (norm_class,), {"forward": forward})


def fuse_rms_norms(model) -> int:
    """Switch the RMSNorms that feed linear layers (see the module docstring) in place; returns
    how many were switched (0 for model types not in PRE_NORM_MODELS)."""
    if getattr(model.config, "model_type", None) not in PRE_NORM_MODELS:
        return 0
    switched = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        # the decoder's last norm, not one inside a layer
        final = leaf == "norm" and name.count(".") <= 1
        if not (leaf in _NORM_NAMES or final) or not _is_rms_norm(module):
            continue
        module.__class__ = _fused_class(type(module))
        switched += 1
    return switched


def _is_rms_norm(module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(getattr(module, "variance_epsilon", None), float)
        and isinstance(weight, torch.nn.Parameter)
        and weight.dim() == 1
    )
