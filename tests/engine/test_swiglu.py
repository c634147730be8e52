"""The fused SwiGLU against autograd's: the same numbers bit for bit, in float32 and under bf16
autocast, LoRA or not, with fewer bytes kept for the backward."""

import pytest
import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.engine.logps import collate, completion_logps
from prefopt.engine.model import LoraSettings, load_model
from prefopt.engine.settings import EngineSettings


def forward_backward(model, precision: str):
    """Summed log-probs of a batch of lists, their gradients, and the bytes autograd kept."""
    examples = [TokenizedList(tuple(range(5, 17)), (tuple(range(20, 29)), tuple(range(30, 36))), (2.0, 1.0)),
                TokenizedList(tuple(range(40, 47)), (tuple(range(50, 61)), tuple(range(70, 74))), (2.0, 1.0))]
    batch = collate(examples, [0, 1], 0, share_prompt=True, pad_multiple=8)
    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
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
    fused = load_model(str(tiny_model), lora=adapters)
    assert fused.prefopt_engine.fused_mlps == AutoConfig.from_pretrained(tiny_model).num_hidden_layers
    assert plain.prefopt_engine.fused_mlps == 0
    want, want_grads, plain_bytes = forward_backward(plain, precision)
    got, got_grads, fused_bytes = forward_backward(fused, precision)
    assert torch.equal(got, want)
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name, grad in want_grads.items():
        assert torch.equal(got_grads[name], grad), name
    assert fused_bytes < plain_bytes
