"""Tokenization boundaries (string and chat data) and the log-prob engine against a naive
full-sequence computation on a tiny model."""

import itertools

import pytest
import torch

from prefopt.data import PreferenceRecord, TokenizeSettings, tokenize_records
from prefopt.data.tokenize import tokenize_record
from prefopt.logps import collate, completion_logps, naive_completion_logps


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from prefopt.model import load_tokenizer

    return load_tokenizer(str(tiny_model))


@pytest.fixture(scope="module")
def model(tiny_model):
    from prefopt.model import load_model

    return load_model(str(tiny_model)).eval()


def test_string_data_prompt_then_completion_plus_one_eos(tokenizer):
    record = PreferenceRecord(prompt="apple river", completions=("yes good", "no bad<|im_end|>"), scores=(1, 0))
    example = tokenize_record(record, tokenizer, TokenizeSettings())
    eos = tokenizer.eos_token_id
    assert list(example.prompt_ids) == tokenizer("apple river")["input_ids"]
    assert list(example.completion_ids[0]) == tokenizer("yes good", add_special_tokens=False)["input_ids"] + [eos]
    for ids in example.completion_ids:  # never a duplicated EOS, even when the text already ends with one
        assert ids[-1] == eos and ids.count(eos) == 1
        assert ids[0] != tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_chat_data_uses_the_template_and_the_boundary_is_exact(tokenizer):
    prompt = [{"role": "user", "content": "hello there"}]
    record = PreferenceRecord(prompt=prompt, scores=(1, 0), completions=(
        [{"role": "assistant", "content": "good answer"}], [{"role": "assistant", "content": "bad"}]))
    example = tokenize_record(record, tokenizer, TokenizeSettings())
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(example.prompt_ids) == prompt_text
    assert tokenizer.decode(example.completion_ids[0]) == "good answer<|im_end|>\n"
    full = tokenizer.apply_chat_template(prompt + list(record.completions[0]), tokenize=False)
    assert tokenizer.decode(example.prompt_ids + example.completion_ids[0]) == full
    assert example.completion_ids[0].count(tokenizer.eos_token_id) == 1


def test_chat_template_always_wraps_strings(tokenizer):
    record = PreferenceRecord(prompt="hi", completions=("a b", "c d"), scores=(1, 0))
    example = tokenize_record(record, tokenizer, TokenizeSettings(chat_template="always"))
    assert tokenizer.decode(example.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(example.completion_ids[0]) == "a b<|im_end|>\n"


def test_truncation_is_explicit_and_counted(tokenizer):
    record = PreferenceRecord(prompt="apple river stone cloud green quick seven happy",
                              completions=("one two three four five six seven", "x"), scores=(0, 1))
    full = tokenize_record(record, tokenizer, TokenizeSettings(max_prompt_tokens=None, max_completion_tokens=None))
    examples, counts = tokenize_records([record], tokenizer, TokenizeSettings(max_prompt_tokens=3,
                                                                              max_completion_tokens=2))
    example = examples[0]
    assert example.prompt_ids == full.prompt_ids[-3:]  # keep_end by default
    assert example.scores == (1.0, 0.0)  # sorted best first
    assert example.completion_ids[1] == full.completion_ids[1][:2]
    assert (counts.prompts, counts.completions, counts.total_completions) == (1, 1, 2)
    start = tokenize_record(record, tokenizer, TokenizeSettings(max_prompt_tokens=3, prompt_truncation="keep_start"))
    assert start.prompt_ids == full.prompt_ids[:3]


def _ragged_examples(tokenizer):
    records = [
        PreferenceRecord(prompt="apple river stone", completions=("yes good", "no", "maybe later today"),
                         scores=(2, 0, 1)),
        PreferenceRecord(prompt="hi", completions=("a longer answer here", "short"), scores=(1, 0)),
    ]
    return tokenize_records(records, tokenizer, TokenizeSettings())[0]


@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "rows"])
@pytest.mark.parametrize("pad_multiple", [1, 16])
def test_engine_equals_naive_full_sequence(model, tokenizer, share_prompt, pad_multiple):
    examples = _ragged_examples(tokenizer)
    batch = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=share_prompt, pad_multiple=pad_multiple)
    assert batch.mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.input_ids.shape[0] == (2 if share_prompt else 5)
    assert batch.input_ids.shape[1] % pad_multiple == 0
    with torch.no_grad():
        naive = naive_completion_logps(model, examples)
        for chunk in (1024, 3):
            fast = completion_logps(model, batch, chunk_tokens=chunk, with_tokens=True)
            torch.testing.assert_close(fast.logps, naive, atol=1e-5, rtol=0)
            torch.testing.assert_close((fast.token_logps * fast.token_mask).sum(-1), fast.logps, atol=1e-5, rtol=0)
    assert fast.lengths[1, 2] == 0 and fast.token_mask[1, 2].sum() == 0
    assert (fast.token_mask.sum(-1) == fast.lengths).all()


def test_shared_prompt_costs_p_plus_k_c(tokenizer):
    examples = _ragged_examples(tokenizer)
    packed = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=True)
    rows = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=False)
    prompt_tokens = sum(len(e.prompt_ids) for e in examples)
    completion_tokens = sum(len(c) for e in examples for c in e.completion_ids)
    assert packed.real_tokens == prompt_tokens + completion_tokens
    assert rows.real_tokens == sum(len(e.prompt_ids) * len(e.completion_ids) for e in examples) + completion_tokens


@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "rows"])
def test_engine_gradients_equal_naive(model, tokenizer, share_prompt):
    examples = _ragged_examples(tokenizer)
    batch = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=share_prompt)
    grads = []
    for fn in (lambda: completion_logps(model, batch, chunk_tokens=4).logps,
               lambda: naive_completion_logps(model, examples)):
        model.zero_grad()
        fn().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_same_padded_length_gives_bitwise_equal_logps_whatever_the_batch(model, tokenizer):
    """Why cached reference log-probs equal the policy's exactly at step 0."""
    # rows of different prompt and completion lengths, padded to one length
    records = [PreferenceRecord(prompt=f"question {i} apple" + " river" * i, completions=(f"yes {i} good", "no"),
                                scores=(1, 0)) for i in range(4)]
    examples, _ = tokenize_records(records, tokenizer, TokenizeSettings())
    with torch.no_grad():
        together = completion_logps(model, collate(examples, [0, 1, 2, 3], 0, pad_multiple=32)).logps
        for i, example in enumerate(examples):
            alone = completion_logps(model, collate([example], [i], 0, pad_multiple=32)).logps
            assert torch.equal(alone[0], together[i])


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("frozen", [False, True], ids=["trained head", "frozen head"])
def test_fused_head_equals_autograd_of_the_formula(softcap, bias, frozen):
    """The LM head's hand-written backward against autograd through log_softmax, for hidden,
    weight and bias, across chunks: with a trained head the logits are recomputed and turned into
    the gradient in place; with a frozen one (LoRA) the forward keeps softmax·W instead."""
    from types import SimpleNamespace

    from prefopt.logps import _head_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).requires_grad_(not frozen)
    model = SimpleNamespace(get_output_embeddings=lambda: head, config=SimpleNamespace(final_logit_softcapping=softcap))
    hidden = torch.randn(70, 16, requires_grad=True)  # 70 rows: two 64-row chunks, the second padded
    targets = torch.randint(0, 50, (70,))
    weights = torch.rand(70)
    trained = [] if frozen else [head.weight] + ([head.bias] if bias else [])
    fused = _head_logps(model, hidden, targets, chunk_tokens=64)
    fused_grads = torch.autograd.grad((fused * weights).sum(), [hidden, *trained])
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [hidden, *trained])
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    for got, want in zip(fused_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert torch.equal(_head_logps(model, hidden, targets, chunk_tokens=64), fused.detach())


def _segment_layout(heads: int = 4, kv_heads: int = 2, dim: int = 8, scale: int = 1, dtype=torch.float32):
    """Ragged rows (prompts and completions of different lengths, K = 1..3, right padding) with
    their query, key and value, the dense block mask that segment attention must equal, and which
    positions are real."""
    torch.manual_seed(0)
    layout = ((5, (9,)), (3, (7, 8, 12)), (6, (8, 11)), (0, (4, 9)))  # (prompt length, completion ends)
    layout = tuple((prompt * scale, tuple(end * scale for end in ends)) for prompt, ends in layout)
    length = 14 * scale
    query = torch.randn(4, heads, length, dim, dtype=dtype, requires_grad=True)
    key, value = (torch.randn(4, kv_heads, length, dim, dtype=dtype, requires_grad=True) for _ in range(2))
    owner = torch.full((4, length), -1)
    for row, (prompt, ends) in enumerate(layout):
        owner[row, :prompt] = 0
        for k, (start, end) in enumerate(itertools.pairwise((prompt, *ends))):
            owner[row, start:end] = k + 1
    allowed = (torch.ones(length, length, dtype=torch.bool).tril() & (owner.unsqueeze(1) >= 0)
               & ((owner.unsqueeze(2) == owner.unsqueeze(1)) | (owner.unsqueeze(1) == 0)))
    allowed |= torch.eye(length, dtype=torch.bool)
    return layout, (query, key, value), allowed.unsqueeze(1), owner >= 0


def test_segment_attention_equals_the_dense_block_mask():
    """Grouped query heads: the segment calls give the dense masked attention at every real position."""
    from types import SimpleNamespace

    from prefopt.attention import segment_attention

    layout, (query, key, value), allowed, real = _segment_layout()
    dim = query.shape[-1]
    module = SimpleNamespace(training=False, num_key_value_groups=2, is_causal=True)
    dense = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed,
                                                             enable_gqa=True).transpose(1, 2)
    segments, _ = segment_attention(module, query, key, value, None, scaling=dim**-0.5, prefopt_segments=layout)
    torch.testing.assert_close(segments[real], dense[real], atol=1e-6, rtol=1e-5)
    assert (segments[~real] == 0).all()
    weights = torch.randn_like(dense) * real[..., None, None]
    grads = [torch.autograd.grad((out * weights).sum(), (query, key, value)) for out in (segments, dense)]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # a model that adds a window (or soft-capping, sinks, a bias) gets the dense call with its mask
    windowed, _ = segment_attention(module, query, key, value, allowed, scaling=dim**-0.5,
                                    prefopt_segments=layout, sliding_window=4096)
    torch.testing.assert_close(windowed, dense)


def _relative_errors(attend, inputs, weights, exact):
    """Relative error (norm of the difference / norm) of the output and the three input gradients
    of `attend` under bf16 autocast, against `exact` (float64 output and gradients)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(*leaves)
    grads = torch.autograd.grad((out.float() * weights).sum(), leaves)
    return [((got.double() - want).norm() / want.norm()).item() for got, want in zip((out, *grads), exact, strict=True)]


@pytest.mark.parametrize("keep", [True, False], ids=["probabilities-kept", "probabilities-recomputed"])
@pytest.mark.parametrize("queries, keys", [(300, 300), (200, 460), (5, 9)])
def test_matmul_attention_is_at_least_as_accurate_as_the_flash_kernel(queries, keys, keep, monkeypatch):
    """Under bf16 autocast on a CPU, against float64: output and gradients of the matmul attention
    (float32 scores, bf16 GEMMs where the result is rounded to bf16) at most the error of PyTorch's
    fused kernel on the same call, with the backward reusing the forward's probabilities or
    recomputing them. 300 queries span three query blocks; 200 after a 260-token prompt are a
    later completion."""
    import prefopt.attention as attention
    from prefopt.attention import _MatmulAttention

    monkeypatch.setattr(attention, "_KEEP_PROBABILITIES_UP_TO", 10_000 if keep else 0)

    torch.manual_seed(0)
    heads, kv_heads, dim = 6, 2, 64
    # laid out as in a model: [1, L, H, D] viewed as [1, H, L, D]; scores of a few units, as trained models have
    query = (torch.randn(1, queries, heads, dim) * 2).transpose(1, 2)
    key = (torch.randn(1, keys, kv_heads, dim) * 2).transpose(1, 2)
    value = torch.randn(1, keys, kv_heads, dim).transpose(1, 2)
    visible = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    weights = torch.randn(1, heads, queries, dim)
    exact = [t.double().requires_grad_() for t in (query, key, value)]
    out = torch.nn.functional.scaled_dot_product_attention(*exact, attn_mask=visible, enable_gqa=True)
    exact = [out.detach(), *torch.autograd.grad((out * weights.double()).sum(), exact)]

    def flash(q, k, v):
        causal = {"is_causal": True} if queries == keys else {"attn_mask": visible}
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, **causal)

    def matmuls(q, k, v):
        return _MatmulAttention.apply(q, k, v.bfloat16(), None)  # values arrive in bf16 from autocast

    ours, theirs = (_relative_errors(attend, (query, key, value), weights, exact) for attend in (matmuls, flash))
    assert max(ours) < 0.01
    for mine, fused in zip(ours, theirs, strict=True):
        assert mine <= 1.05 * fused


def test_matmul_attention_backward_is_the_same_with_kept_or_recomputed_probabilities(monkeypatch):
    """The backward's two ways to the probabilities (kept from the forward up to
    `_KEEP_PROBABILITIES_UP_TO` keys, recomputed beyond) give the same gradients bit for bit, and
    the kept ones are let go after the backward."""
    import prefopt.attention as attention

    torch.manual_seed(0)
    query = (torch.randn(1, 300, 6, 64) * 2).transpose(1, 2)
    key = (torch.randn(1, 300, 2, 64) * 2).transpose(1, 2)
    value = torch.randn(1, 300, 2, 64).bfloat16().transpose(1, 2)
    grad = torch.randn(1, 6, 300, 64).bfloat16()

    def gradients(limit: int):
        monkeypatch.setattr(attention, "_KEEP_PROBABILITIES_UP_TO", limit)
        leaves = [t.detach().requires_grad_() for t in (query, key, value)]
        out = attention._MatmulAttention.apply(*leaves, None)
        kept = out.grad_fn.kept
        grads = torch.autograd.grad(out, leaves, grad)
        return kept, out.grad_fn.kept, grads

    kept, after, grads = gradients(300)
    assert len(kept) == 2 * 3 and after is None  # 2 key heads × 3 query blocks, freed by the backward
    none, _, recomputed = gradients(299)
    assert none is None
    for a, b in zip(grads, recomputed, strict=True):
        assert torch.equal(a, b)


def test_segment_attention_through_matmuls_equals_the_dense_block_mask(monkeypatch):
    """The matmul path with the segment bookkeeping (first calls causal, later completions after
    their prompt), forced on for every call: equal to float64 dense attention with the block mask
    up to bf16 rounding, and as close as the flash kernel's calls."""
    from types import SimpleNamespace

    import prefopt.attention as attention

    layout, inputs, allowed, real = _segment_layout(heads=6, kv_heads=2, dim=64, scale=12)
    module = SimpleNamespace(training=False, num_key_value_groups=3, is_causal=True)
    exact = [t.double() for t in inputs]
    dense = torch.nn.functional.scaled_dot_product_attention(*exact, attn_mask=allowed, enable_gqa=True)
    weights = torch.randn(dense.transpose(1, 2).shape) * real[..., None, None]
    exact_grads = torch.autograd.grad((dense.transpose(1, 2) * weights.double()).sum(), exact)
    exact = [dense.detach().transpose(1, 2) * real[..., None, None], *exact_grads]  # padding: 0

    def segments(q, k, v):
        return attention.segment_attention(module, q, k, v, None, prefopt_segments=layout)[0]

    errors = lambda: _relative_errors(segments, inputs, weights, exact)
    monkeypatch.setattr(attention, "_matmuls_are_faster", lambda query, dropout: False)
    fused = errors()
    monkeypatch.setattr(attention, "_matmuls_are_faster", lambda query, dropout: True)
    monkeypatch.setattr(attention, "_MATMULS_FROM", (0, 0))
    calls = []
    monkeypatch.setattr(attention._MatmulAttention, "apply",
                        lambda *args, apply=attention._MatmulAttention.apply: calls.append(1) or apply(*args))
    ours = errors()
    assert len(calls) == 1 + 3 + 2 + 2  # every call of every row
    assert max(ours) < 0.01
    for mine, theirs in zip(ours, fused, strict=True):
        assert mine <= 1.05 * theirs


def test_models_loaded_by_prefopt_use_segment_attention(model, tokenizer):
    from prefopt.attention import SEGMENT_ATTENTION

    assert model.config._attn_implementation == SEGMENT_ATTENTION
    examples = _ragged_examples(tokenizer)
    batch = collate(examples, [0, 1], tokenizer.pad_token_id, pad_multiple=16)
    with torch.no_grad():
        segments = completion_logps(model, batch).logps
        model.set_attn_implementation("sdpa")
        try:
            dense = completion_logps(model, batch).logps
        finally:
            model.set_attn_implementation(SEGMENT_ATTENTION)
    torch.testing.assert_close(segments, dense, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, tokenizer):
    """Recomputing each layer in the backward (with the segment attention's own autograd Function
    inside) changes neither the log-probs nor any gradient."""
    from prefopt.model import load_model

    batch = collate(_ragged_examples(tokenizer), [0, 1], tokenizer.pad_token_id, pad_multiple=16)
    results = []
    for checkpointing in (False, True):
        model = load_model(str(tiny_model), gradient_checkpointing=checkpointing).train()
        assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules()) == checkpointing
        logps = completion_logps(model, batch).logps
        logps[batch.mask].sum().backward()
        results.append((logps.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (plain, plain_grads), (recomputed, recomputed_grads) = results
    torch.testing.assert_close(recomputed, plain, atol=0, rtol=0)
    assert all(grad is not None for grad in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def _lora_models(tiny_model, **settings):
    """The same LoRA model twice (random, non-zero adapters): prefopt's fused layers and peft's own."""
    from peft.tuners.lora.layer import Linear

    from prefopt.lora import FusedLoraLinear
    from prefopt.model import LoraSettings, load_model

    torch.manual_seed(0)
    fused = load_model(str(tiny_model), lora=LoraSettings(**settings))
    with torch.no_grad():
        for name, parameter in fused.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.2)
    plain = load_model(str(tiny_model), lora=LoraSettings(**settings))
    plain.load_state_dict(fused.state_dict())
    swapped = [m for m in plain.modules() if type(m) is FusedLoraLinear]
    assert swapped, "load_model should switch peft's LoRA linears to the fused ones"
    for module in swapped:
        module.__class__ = Linear
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
        torch.testing.assert_close(results[0][1][name], results[1][1][name], rtol=1e-4, atol=2e-5, msg=name)
    with fused.disable_adapter(), plain.disable_adapter(), torch.no_grad():  # adapters off: the same base model
        off = completion_logps(fused, batch).logps
        assert torch.equal(off, completion_logps(plain, batch).logps) and not torch.equal(off, results[0][0])


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
    for name, model, bf16 in (("fp32", plain, False), ("fused", fused, True), ("peft", plain, True)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logps = completion_logps(model, batch).logps
        assert logps.dtype == torch.float32
        logps.sum().backward()
        results[name] = logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    truth, truth_grads = results["fp32"]
    errors = {}
    for name in ("fused", "peft"):
        logps, grads = results[name]
        torch.testing.assert_close(logps, truth, rtol=0, atol=0.05)
        errors[name] = [float((grads[n] - g).norm() / g.norm()) for n, g in truth_grads.items()]
    assert statistics.mean(errors["fused"]) < 1.25 * statistics.mean(errors["peft"]), errors
    assert max(errors["fused"]) < 0.4, errors


def test_fused_lora_falls_back_to_peft_where_it_does_not_apply(tiny_model):
    from prefopt.lora import FusedLoraLinear

    fused, plain = _lora_models(tiny_model, dropout=0.1)
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    x = torch.randn(2, 5, layer.in_features)
    assert layer._plain_adapter(x, (), {}) is None  # dropout
    fused, _ = _lora_models(tiny_model)
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    assert layer._plain_adapter(x, (), {}) == "default"
    assert layer._plain_adapter(x.double(), (), {}) is None
    bias_free = layer.lora_B["default"]
    layer.lora_B["default"] = torch.nn.Linear(bias_free.in_features, bias_free.out_features)  # peft's lora_bias
    assert layer._plain_adapter(x, (), {}) is None
    layer.lora_B["default"] = bias_free
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._plain_adapter(x, (), {}) == "default"  # autocast casts input and weights alike
        assert layer._plain_adapter(x.bfloat16(), (), {}) == "default"
        layer.lora_A["default"].to(torch.bfloat16)  # weights of mixed dtypes: peft's forward
        assert layer._plain_adapter(x, (), {}) is None
        layer.lora_A["default"].to(torch.float32)
    with fused.disable_adapter():
        assert layer._plain_adapter(x, (), {}) is None
        torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
