"""The sampler's own forward (prefopt.engine.decoder) against the model's forward on prefopt's
decode attention: the same logits bit for bit in float32 (prefill, decoding steps, rows leaving
the batch) for Llama, Qwen 2 (biases) and Qwen 3 (per-head norms); LoRA through merged weights;
bf16 weights (oneDNN's reordered layout where the CPU has it) within bf16 rounding; and an
architecture it does not know decoding through the model's forward."""

import copy

import pytest
import torch

from prefopt.engine import decode
from prefopt.engine.attention import use_segment_attention
from prefopt.engine.decode import DecodeState
from prefopt.engine.decoder import Decoder
from prefopt.engine.model import LoraSettings, load_model
from prefopt.generate import sampling
from prefopt.generate.sampling import SamplingSettings, sample

PROMPTS = [[5, 9, 14, 3, 7], [11, 2], [8, 8, 30, 41, 6, 12, 19]]


def model_forward(model):
    """The sampler's forward through the model's own modules."""
    original = Decoder.of
    Decoder.of = staticmethod(lambda model: None)
    try:
        return sampling._forward(model)
    finally:
        Decoder.of = original


def decode_logits(
    forward, layers: int, k: int = 2, steps: int = 5, packed: bool = False
) -> list[torch.Tensor]:
    """Logits of the prefills (each prompt alone, or all `packed` into one call) and of `steps`
    decoding steps (a fixed token each); after the second step the middle prompt's rows leave the
    batch."""
    state, out = DecodeState.empty(layers), []
    with torch.inference_mode():
        for pack in [PROMPTS] if packed else [[ids] for ids in PROMPTS]:
            out.extend(forward(*state.prefill(pack), state))
        state.start_decoding(k, steps)
        rows = [(p, j) for p in range(len(PROMPTS)) for j in range(k)]
        for t in range(steps):
            if t == 2:
                keep = [r for r, (p, _) in enumerate(rows) if p != 1]
                state.keep(torch.tensor(keep))
                rows = [rows[r] for r in keep]
            tokens = torch.tensor([[(3 * p + j + t) % 40 + 1] for p, j in rows])
            positions = torch.tensor([[len(PROMPTS[p]) + t] for p, _ in rows])
            out.append(forward(tokens, positions, state))
            state.length += 1
    return out


def tiny(config_class, **extra):
    torch.manual_seed(0)
    config = config_class(vocab_size=64, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, max_position_embeddings=128, **extra)  # fmt: skip
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    assert use_segment_attention(model)
    with torch.no_grad():  # biases and norm weights away from their initial zeros and ones
        for name, parameter in model.named_parameters():
            if "bias" in name or "norm" in name:
                parameter.normal_(1.0 if "norm" in name else 0.0, 0.1)
    return model


def configs():
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config, SmolLM3Config

    return {
        "llama": lambda: tiny(LlamaConfig),
        "qwen2": lambda: tiny(Qwen2Config),  # q, k and v with biases
        "qwen3": lambda: tiny(Qwen3Config),  # q and k normalised per head
        "smollm3": lambda: tiny(
            SmolLM3Config, no_rope_layers=[1, 0], pad_token_id=0, bos_token_id=1, eos_token_id=2
        ),  # no rotation in layer 1
    }


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "smollm3"])
def test_float32_logits_are_the_models_bit_for_bit(name):
    model = configs()[name]()
    decoder = Decoder.of(model)
    assert decoder is not None and not decoder.packed
    layers = model.config.num_hidden_layers
    for packed in (False, True):
        ours = decode_logits(decoder, layers, packed=packed)
        theirs = decode_logits(model_forward(model), layers, packed=packed)
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == torch.float32
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prompts_prefilled_packed_give_what_each_gives_alone(dtype):
    """Packed into one call, each prompt attends to itself alone: its logits, and every step
    decoded from its keys and values, are those of its own prefill, up to the GEMMs' rounding,
    which depends on the row count (float32 in its last bits)."""
    model = configs()["qwen3"]().to(dtype)
    decoder, layers = Decoder.of(model), model.config.num_hidden_layers
    packed = decode_logits(decoder, layers, packed=True)
    alone = decode_logits(decoder, layers)
    assert len(packed) == len(alone) == len(PROMPTS) + 5
    tolerance = 1e-5 if dtype == torch.float32 else 0.02
    for a, b in zip(packed, alone, strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_bf16_weights_within_bf16_rounding(model):
    rounded = copy.deepcopy(model).to(torch.bfloat16)
    decoder = Decoder.of(rounded)
    assert decoder.packed == (torch.backends.mkldnn.is_available()
                              and torch.ops.mkldnn._is_mkldnn_bf16_supported())  # fmt: skip
    layers = model.config.num_hidden_layers
    for ours, theirs in zip(decode_logits(decoder, layers),
                            decode_logits(model_forward(rounded), layers), strict=True):  # fmt: skip
        torch.testing.assert_close(ours, theirs, rtol=0.02, atol=0.02)
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_lora_layers_decode_through_their_merged_weights(tiny_model):
    policy = load_model(str(tiny_model), lora=LoraSettings(r=4, alpha=8)).eval()
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    layers = policy.config.num_hidden_layers
    theirs = decode_logits(model_forward(policy), layers)
    # float32 GEMMs can round by their operands' addresses (MKL on an AMD EPYC: the LM head's
    # weight as loaded sits 8 bytes off a 64-byte line), so both sides read copies, allocated alike
    ours = decode_logits(Decoder.of(copy.deepcopy(policy)), layers)
    merged = decode_logits(model_forward(copy.deepcopy(policy).merge_and_unload()), layers)
    for a, b, c in zip(ours, theirs, merged, strict=True):
        assert torch.equal(a, c)  # the merged model's numbers
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_an_unknown_architecture_decodes_through_the_models_forward(model, tokenizer, monkeypatch):
    prompts = [tokenizer(text)["input_ids"] for text in ("apple river stone", "hi")]
    greedy = SamplingSettings(k=2, temperature=0, max_new_tokens=8)
    seeded = SamplingSettings(k=2, max_new_tokens=8, seed=3)
    ours = [sample(model, tokenizer, prompts, s) for s in (greedy, seeded)]
    monkeypatch.setattr(Decoder, "of", staticmethod(lambda model: None))
    theirs = [sample(model, tokenizer, prompts, s) for s in (greedy, seeded)]
    assert ours == theirs
    generated = sample(model, tokenizer, prompts, greedy, backend="transformers")
    assert [[s.token_ids for s in samples] for samples in theirs[0]] == [
        [s.token_ids for s in samples] for samples in generated
    ]


def test_a_model_whose_layers_or_windows_it_does_not_know_gets_none():
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig

    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    assert Decoder.of(GPT2LMHeadModel(config)) is None
    assert Decoder.of(tiny(MistralConfig, sliding_window=None)) is not None
    windowed = tiny(MistralConfig, sliding_window=None)
    windowed.config.sliding_window = 16
    assert Decoder.of(windowed) is None


@pytest.mark.parametrize("name", ["llama", "qwen3", "smollm3"])
def test_bf16_layers_in_c_give_pytorch_s_tokens(name, monkeypatch):
    """The bf16 decoder's elementwise work in C (engine/kernels/decode.c) against the same
    decoder in PyTorch's ops: the logits within bf16 rounding, the same greedy tokens."""
    model = configs()[name]().to(torch.bfloat16)
    decoder, layers = Decoder.of(model), model.config.num_hidden_layers
    assert decoder.kernels is not None
    in_c = decode_logits(decoder, layers, packed=True)
    decoder.kernels = None
    monkeypatch.setattr(decode, "_kernel", lambda: None)
    in_pytorch = decode_logits(decoder, layers, packed=True)
    for a, b in zip(in_c, in_pytorch, strict=True):
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
