"""peft's LoRA linear with the adapter summed inside the base GEMM, against peft's own."""

import torch

from prefopt.data import PreferenceRecord, TokenizeSettings, tokenize_records
from prefopt.engine.logps import collate, completion_logps


def _lora_models(tiny_model, **settings):
    """The same LoRA model twice (random, non-zero adapters): prefopt's fused layers and peft's own."""
    from prefopt.engine.lora import FusedLoraLinear
    from prefopt.engine.model import LoraSettings, load_model
    from prefopt.engine.settings import EngineSettings

    torch.manual_seed(0)
    fused = load_model(str(tiny_model), lora=LoraSettings(**settings))
    with torch.no_grad():
        for name, parameter in fused.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.2)
    plain = load_model(
        str(tiny_model), lora=LoraSettings(**settings), engine=EngineSettings(fused_lora=False)
    )
    plain.load_state_dict(fused.state_dict())
    fused_layers = [m for m in fused.modules() if type(m) is FusedLoraLinear]
    assert fused_layers and len(fused_layers) == fused.prefopt_engine.fused_lora_layers
    assert (
        not any(type(m) is FusedLoraLinear for m in plain.modules())
        and plain.prefopt_engine.fused_lora_layers == 0
    )
    return fused, plain


def test_fused_lora_sum_equals_peft_in_values_and_gradients(tiny_model, tokenizer):
    fused, plain = _lora_models(tiny_model)
    records = [PreferenceRecord("Say hi", ("hi there", "go away", "hello"), (2.0, 0.0, 1.0))]
    examples, _ = tokenize_records(records, tokenizer, TokenizeSettings(64, 32))
    batch = collate(examples, [0], tokenizer.pad_token_id)
    results = []
    for model in (fused, plain):
        logps = completion_logps(model, batch).logps
        logps.sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((logps.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name in results[0][1]:
        torch.testing.assert_close(
            results[0][1][name], results[1][1][name], rtol=1e-4, atol=2e-5, msg=name
        )
    with (
        fused.disable_adapter(),
        plain.disable_adapter(),
        torch.no_grad(),
    ):  # adapters off: the same base model
        off = completion_logps(fused, batch).logps
        assert torch.equal(off, completion_logps(plain, batch).logps) and not torch.equal(
            off, results[0][0]
        )


def test_fused_lora_sum_under_bf16_autocast_is_as_accurate_as_peft(tiny_model, tokenizer):
    """Under bf16 autocast the fused sum accumulates the adapter inside the GEMM where peft adds a
    bf16 product; both differ from float32 by bf16 rounding (about 12% in this tiny random model's
    gradients), and the fused one by no more than peft's. A wrong scaling or a dropped adapter
    would differ by about 100%."""
    import statistics

    fused, plain = _lora_models(tiny_model)
    records = [PreferenceRecord("Say hi", ("hi there", "go away", "hello"), (2.0, 0.0, 1.0))]
    examples, _ = tokenize_records(records, tokenizer, TokenizeSettings(64, 32))
    batch = collate(examples, [0], tokenizer.pad_token_id)
    results = {}
    for name, model, bf16 in (
        ("fp32", plain, False),
        ("fused", fused, True),
        ("peft", plain, True),
    ):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logps = completion_logps(model, batch).logps
        assert logps.dtype == torch.float32
        logps.sum().backward()
        results[name] = (
            logps.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
        )
    truth, truth_grads = results["fp32"]
    errors = {}
    for name in ("fused", "peft"):
        logps, grads = results[name]
        torch.testing.assert_close(logps, truth, rtol=0, atol=0.05)
        errors[name] = [float((grads[n] - g).norm() / g.norm()) for n, g in truth_grads.items()]
    assert statistics.mean(errors["fused"]) < 1.25 * statistics.mean(errors["peft"]), errors
    assert max(errors["fused"]) < 0.4, errors


def test_fused_lora_falls_back_to_peft_where_it_does_not_apply(tiny_model):
    from prefopt.engine.lora import FusedLoraLinear

    fused, plain = _lora_models(tiny_model, dropout=0.1)
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    x = torch.randn(2, 5, layer.in_features)
    assert layer._plain_adapter(x, (), {}) is None  # dropout
    fused, _ = _lora_models(tiny_model)
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    assert layer._plain_adapter(x, (), {}) == "default"
    assert layer._plain_adapter(x.double(), (), {}) is None
    bias_free = layer.lora_B["default"]
    # peft's lora_bias
    layer.lora_B["default"] = torch.nn.Linear(bias_free.in_features, bias_free.out_features)
    assert layer._plain_adapter(x, (), {}) is None
    layer.lora_B["default"] = bias_free
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # autocast casts input and weights alike
        assert layer._plain_adapter(x, (), {}) == "default"
        assert layer._plain_adapter(x.bfloat16(), (), {}) == "default"
        layer.lora_A["default"].to(torch.bfloat16)  # weights of mixed dtypes: peft's forward
        assert layer._plain_adapter(x, (), {}) is None
        layer.lora_A["default"].to(torch.float32)
    with fused.disable_adapter():
        assert layer._plain_adapter(x, (), {}) is None
        torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
