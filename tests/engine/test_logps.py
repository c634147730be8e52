"""The log-prob engine against a naive full-sequence computation on a tiny model: values,
gradients, the shared-prompt cost, batch invariance, the fused LM head and checkpointing."""

import pytest
import torch

from prefopt.data import PreferenceRecord, TokenizeSettings, tokenize_records
from prefopt.engine.logps import collate, completion_logps, naive_completion_logps
from prefopt.engine.settings import EngineSettings
from tiny import ragged_examples


@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "rows"])
@pytest.mark.parametrize("pad_multiple", [1, 16])
def test_engine_equals_naive_full_sequence(model, tokenizer, share_prompt, pad_multiple):
    examples = ragged_examples(tokenizer)
    batch = collate(
        examples,
        [0, 1],
        tokenizer.pad_token_id,
        share_prompt=share_prompt,
        pad_multiple=pad_multiple,
    )
    assert batch.mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.input_ids.shape[0] == (2 if share_prompt else 5)
    assert batch.input_ids.shape[1] % pad_multiple == 0
    with torch.no_grad():
        naive = naive_completion_logps(model, examples)
        for chunk in (1024, 3):
            fast = completion_logps(
                model, batch, EngineSettings(chunk_tokens=chunk), with_tokens=True
            )
            torch.testing.assert_close(fast.logps, naive, atol=1e-5, rtol=0)
            torch.testing.assert_close(
                (fast.token_logps * fast.token_mask).sum(-1), fast.logps, atol=1e-5, rtol=0
            )
    assert fast.lengths[1, 2] == 0 and fast.token_mask[1, 2].sum() == 0
    assert (fast.token_mask.sum(-1) == fast.lengths).all()


@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "rows"])
def test_wpo_sampling_weights_equal_a_plain_forward(model, tokenizer, share_prompt):
    """Each completion's mean of log π(y_t) − log Σ_v π(v)², from the engine's one pass of the head,
    against full-vocabulary softmaxes of each prompt + completion alone."""
    examples = ragged_examples(tokenizer)
    batch = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=share_prompt)
    expected = torch.zeros(2, 3)
    with torch.no_grad():
        for b, example in enumerate(examples):
            for k, completion in enumerate(example.completion_ids):
                ids = torch.tensor([list(example.prompt_ids) + list(completion)])
                log_probs = (
                    model(input_ids=ids)
                    .logits.float()[0, len(example.prompt_ids) - 1 : -1]
                    .log_softmax(-1)
                )
                chosen = log_probs.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)
                expected[b, k] = (chosen - (2 * log_probs).logsumexp(-1)).mean()
        fast = completion_logps(
            model, batch, EngineSettings(chunk_tokens=3), with_sampling_weights=True
        )
    torch.testing.assert_close(fast.sampling_log_weights, expected, atol=1e-5, rtol=0)
    assert completion_logps(model, batch).sampling_log_weights is None


@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "rows"])
def test_prompt_log_probs_equal_a_plain_forward_and_carry_gradients(model, tokenizer, share_prompt):
    examples = ragged_examples(tokenizer)
    batch = collate(
        examples, [0, 1], tokenizer.pad_token_id, share_prompt=share_prompt, pad_multiple=16
    )
    expected = []
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([list(example.prompt_ids)])
            log_probs = model(input_ids=ids).logits.float()[0, :-1].log_softmax(-1)
            expected.append(log_probs.gather(-1, ids[0, 1:].unsqueeze(-1)).sum())
    result = completion_logps(model, batch, EngineSettings(chunk_tokens=3), with_prompt=True)
    torch.testing.assert_close(
        result.prompt_logps.detach(), torch.stack(expected), atol=1e-5, rtol=0
    )
    assert batch.prompt_lengths.tolist() == [len(e.prompt_ids) - 1 for e in examples]
    result.prompt_logps.sum().backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_shared_prompt_costs_p_plus_k_c(tokenizer):
    examples = ragged_examples(tokenizer)
    packed = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=True)
    rows = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=False)
    prompt_tokens = sum(len(e.prompt_ids) for e in examples)
    completion_tokens = sum(len(c) for e in examples for c in e.completion_ids)
    assert packed.real_tokens == prompt_tokens + completion_tokens
    assert (
        rows.real_tokens
        == sum(len(e.prompt_ids) * len(e.completion_ids) for e in examples) + completion_tokens
    )


@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "rows"])
def test_engine_gradients_equal_naive(model, tokenizer, share_prompt):
    examples = ragged_examples(tokenizer)
    batch = collate(examples, [0, 1], tokenizer.pad_token_id, share_prompt=share_prompt)
    grads = []
    for fn in (
        lambda: completion_logps(model, batch, EngineSettings(chunk_tokens=4)).logps,
        lambda: naive_completion_logps(model, examples),
    ):
        model.zero_grad()
        fn().sum().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_same_padded_length_gives_bitwise_equal_logps_whatever_the_batch(model, tokenizer):
    """Why cached reference log-probs equal the policy's exactly at step 0."""
    # rows of different prompt and completion lengths, padded to one length
    records = [
        PreferenceRecord(
            prompt=f"question {i} apple" + " river" * i,
            completions=(f"yes {i} good", "no"),
            scores=(1, 0),
        )
        for i in range(4)
    ]
    examples, _ = tokenize_records(records, tokenizer, TokenizeSettings())
    with torch.no_grad():
        together = completion_logps(
            model, collate(examples, [0, 1, 2, 3], 0, pad_multiple=32)
        ).logps
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

    from prefopt.engine.logps import _head_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).requires_grad_(not frozen)
    model = SimpleNamespace(
        get_output_embeddings=lambda: head, config=SimpleNamespace(final_logit_softcapping=softcap)
    )
    # 70 rows: two 64-row chunks, the second padded
    hidden = torch.randn(70, 16, requires_grad=True)
    targets = torch.randint(0, 50, (70,))
    weights = torch.rand(70)
    trained = [] if frozen else [head.weight] + ([head.bias] if bias else [])
    fused, squares = _head_logps(model, hidden, targets, chunk_tokens=64, sum_squares=True)
    fused_grads = torch.autograd.grad((fused * weights).sum(), [hidden, *trained])
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [hidden, *trained])
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    for got, want in zip(fused_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # WPO's log Σ_v p(v)², from the same pass, and with or without it the same log-probs
    torch.testing.assert_close(
        squares, (2 * logits.log_softmax(-1)).logsumexp(-1).detach(), atol=1e-5, rtol=0
    )
    with torch.no_grad():
        alone, none = _head_logps(model, hidden, targets, chunk_tokens=64)
        assert torch.equal(alone, fused.detach()) and none is None
    # a head that is not a plain Linear (LoRA on the head) goes through its own forward
    other_head = type("WrappedHead", (torch.nn.Linear,), {})(16, 50, bias=bias)
    other_head.load_state_dict(head.state_dict())
    wrapped = SimpleNamespace(
        get_output_embeddings=lambda: other_head,
        config=SimpleNamespace(final_logit_softcapping=softcap),
    )
    other, other_squares = _head_logps(wrapped, hidden, targets, chunk_tokens=64, sum_squares=True)
    torch.testing.assert_close(other, fused, atol=1e-5, rtol=0)
    torch.testing.assert_close(other_squares, squares, atol=1e-5, rtol=0)


def test_models_loaded_by_prefopt_use_segment_attention(model, tokenizer):
    from prefopt.engine.attention import SEGMENT_ATTENTION

    assert model.config._attn_implementation == SEGMENT_ATTENTION
    examples = ragged_examples(tokenizer)
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
    from prefopt.engine.model import load_model

    batch = collate(ragged_examples(tokenizer), [0, 1], tokenizer.pad_token_id, pad_multiple=16)
    results = []
    for checkpointing in (False, True):
        model = load_model(str(tiny_model), gradient_checkpointing=checkpointing).train()
        assert (
            any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
            == checkpointing
        )
        logps = completion_logps(model, batch).logps
        logps[batch.mask].sum().backward()
        results.append((logps.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (plain, plain_grads), (recomputed, recomputed_grads) = results
    torch.testing.assert_close(recomputed, plain, atol=0, rtol=0)
    assert all(grad is not None for grad in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
