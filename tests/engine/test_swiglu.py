"""The fused SwiGLU against autograd's: the same numbers bit for bit, in float32 and under bf16
autocast, LoRA or not, with fewer bytes kept for the backward; and a LoRA MLP as one function:
the same forward bit for bit, gradients as close to float64's as autograd's, fewer bytes kept."""

import pytest
import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.engine.logps import collate, completion_logps
from prefopt.engine.model import LoraSettings, load_model
from prefopt.engine.settings import EngineSettings


def forward_backward(model, precision: str):
    """Summed log-probs of a batch of lists, their gradients, and the bytes autograd kept (besides
    the weights)."""
    examples = [
        TokenizedList(
            tuple(range(5, 17)), (tuple(range(20, 29)), tuple(range(30, 36))), (2.0, 1.0)
        ),
        TokenizedList(
            tuple(range(40, 47)), (tuple(range(50, 61)), tuple(range(70, 74))), (2.0, 1.0)
        ),
    ]
    batch = collate(examples, [0, 1], 0, share_prompt=True, pad_multiple=8)
    kept, weights = [], {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):  # the bytes kept besides the model's own weights
        if tensor.untyped_storage().data_ptr() not in weights:
            kept.append(tensor.numel() * tensor.element_size())
        return tensor

    model.zero_grad(set_to_none=True)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        logps = completion_logps(model, batch, model.prefopt_engine.settings).logps
    (logps * torch.tensor([[1.0, -2.0]])).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads, sum(kept)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_fused_swiglu_gives_autograds_numbers_and_keeps_less(tiny_model, precision, lora):
    from transformers import AutoConfig

    adapters = LoraSettings(r=4, alpha=8) if lora else None
    torch.manual_seed(0)
    plain = load_model(str(tiny_model), lora=adapters, engine=EngineSettings(fused_swiglu=False))
    torch.manual_seed(0)
    fused = load_model(str(tiny_model), lora=adapters, engine=EngineSettings(fused_lora_mlp=False))
    assert (
        fused.prefopt_engine.fused_mlps == AutoConfig.from_pretrained(tiny_model).num_hidden_layers
    )
    assert plain.prefopt_engine.fused_mlps == 0
    want, want_grads, plain_bytes = forward_backward(plain, precision)
    got, got_grads, fused_bytes = forward_backward(fused, precision)
    assert torch.equal(got, want)
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name, grad in want_grads.items():
        assert torch.equal(got_grads[name], grad), name
    assert fused_bytes < plain_bytes


def float64_grads(tiny_model, adapters) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = load_model(
        str(tiny_model), lora=adapters, engine=EngineSettings(fused_swiglu=False)
    ).double()
    return forward_backward(model, "fp32")[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_lora_mlp_as_one_function_keeps_less_and_is_as_exact(tiny_model, precision):
    adapters = LoraSettings(r=4, alpha=8)
    torch.manual_seed(0)
    plain = load_model(str(tiny_model), lora=adapters, engine=EngineSettings(fused_lora_mlp=False))
    torch.manual_seed(0)
    fused = load_model(str(tiny_model), lora=adapters)
    for model in (plain, fused):  # B starts at zero: give the adapters a path of their own to check
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data = (
                    torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name)))
                    * 0.1
                )
    want, want_grads, plain_bytes = forward_backward(plain, precision)
    got, got_grads, fused_bytes = forward_backward(fused, precision)
    assert torch.equal(got, want)  # the forward is FusedLoraLinear's ops
    assert fused_bytes < plain_bytes
    exact = float64_grads(tiny_model, adapters) if precision == "bf16" else None
    mlp_grads = [name for name in want_grads if "mlp" in name]
    assert len(mlp_grads) == 6 * 2  # A and B of gate, up and down, two layers
    for name, grad in want_grads.items():
        if precision == "fp32":
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
        else:  # bf16: no further from float64 than autograd's own (a little slack for rounding's luck)
            error = (got_grads[name].double() - exact[name]).norm() / exact[name].norm()
            assert (
                error <= 1.2 * (grad.double() - exact[name]).norm() / exact[name].norm() + 1e-3
            ), name
