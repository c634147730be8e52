"""The fused RMSNorm against transformers' own, and which norms load_model switches."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from prefopt.engine.norm import _fused_class, fuse_rms_norms


def norms(hidden: int = 48, seed: int = 0):
    torch.manual_seed(seed)
    reference = LlamaRMSNorm(hidden, eps=1e-5)
    torch.nn.init.normal_(reference.weight, 1.0, 0.3)
    fused = LlamaRMSNorm(hidden, eps=1e-5)
    fused.load_state_dict(reference.state_dict())
    fused.__class__ = _fused_class(LlamaRMSNorm)
    return reference, fused


@pytest.mark.parametrize("shape", [(3, 7, 48), (5, 48), (0, 48)])
def test_float32_forward_and_gradients_match_transformers(shape):
    reference, fused = norms()
    hidden = torch.randn(*shape) * 3
    grad = torch.randn(*shape)
    results = []
    for norm in (reference, fused):
        leaf = hidden.clone().requires_grad_()
        out = norm(leaf)
        out.backward(grad)
        results.append((out, leaf.grad, norm.weight.grad))
    (out, dx, dw), (fused_out, fused_dx, fused_dw) = results
    assert fused_out.dtype == torch.float32
    torch.testing.assert_close(fused_out, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused_dx, dx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_dw, dw, rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences_in_float64():
    torch.manual_seed(1)
    _, fused = norms(hidden=6)
    fused.double()
    hidden = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    # float64 input is not the fused path's dtype: call the function itself
    from prefopt.engine.norm import _RMSNorm

    assert torch.autograd.gradcheck(
        lambda x, w: _RMSNorm.apply(x, w, 1e-5, torch.float64),
        (hidden, fused.weight.detach().clone().requires_grad_()),
    )


def test_under_bf16_autocast_the_output_is_what_the_linears_would_cast_to():
    reference, fused = norms()
    hidden = torch.randn(6, 11, 48) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = reference(hidden), fused(hidden)
    assert want.dtype == torch.float32 and got.dtype == torch.bfloat16
    assert torch.equal(got, want.to(torch.bfloat16))


def test_inputs_that_are_not_float32_take_the_modules_own_forward():
    reference, fused = norms()
    hidden = torch.randn(4, 48).to(torch.bfloat16)
    assert torch.equal(fused(hidden), reference(hidden))


def test_load_model_switches_the_norms_that_feed_linears(tiny_model):
    from prefopt.engine.model import LoraSettings, load_model

    for lora in (None, LoraSettings()):
        model = load_model(str(tiny_model), lora=lora)
        assert model.prefopt_engine.fused_norms == 5
        switched = sorted(
            name.rsplit("model.", 1)[-1]
            for name, m in model.named_modules()
            if type(m).__name__ == "FusedLlamaRMSNorm"
        )
        assert switched == [
            "layers.0.input_layernorm",
            "layers.0.post_attention_layernorm",
            "layers.1.input_layernorm",
            "layers.1.post_attention_layernorm",
            "norm",
        ]
        assert all(
            isinstance(m, LlamaRMSNorm)
            for name, m in model.named_modules()
            if name.endswith("norm")
        )


def test_other_model_types_keep_their_norms(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.model_type = "olmo2"  # post-norm layers: a norm's output feeds the residual stream
    assert fuse_rms_norms(model) == 0
    assert not any(type(m).__name__.startswith("Fused") for m in model.modules())


def test_the_fused_norm_switch_turns_it_off(tiny_model):
    from prefopt.engine.model import load_model
    from prefopt.engine.settings import EngineSettings

    model = load_model(str(tiny_model), engine=EngineSettings(fused_norm=False))
    assert model.prefopt_engine.fused_norms == 0
    assert not any(
        type(m).__name__.startswith("Fused") and type(m).__name__.endswith("RMSNorm")
        for m in model.modules()
    )
