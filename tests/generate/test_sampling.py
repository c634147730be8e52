"""The shared-prefix sampler against transformers' generate and a plain forward on a tiny model:
the same greedy tokens, the same log-probs, per-completion seeds that do not depend on the batch,
finished sequences leaving the batch, and the sampling settings doing what they say."""

import functools

import pytest
import torch
import torch.nn.functional as F

from prefopt.generate import sampling
from prefopt.generate.sampling import SamplingSettings, sample

PROMPTS = [
    "apple river stone",
    "green quick seven happy ocean light table music",
    "hi",
    "paper window",
]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(text)["input_ids"] for text in PROMPTS]


def tokens(results):
    return [[s.token_ids for s in samples] for samples in results]


def test_greedy_equals_transformers_generate(model, tokenizer, prompts):
    settings = SamplingSettings(k=2, temperature=0, max_new_tokens=12, batch_size=3)
    assert tokens(sample(model, tokenizer, prompts, settings)) == tokens(
        sample(model, tokenizer, prompts, settings, backend="transformers")
    )


def test_finished_sequences_leave_the_batch_and_the_others_are_unchanged(
    model, tokenizer, prompts, monkeypatch
):
    """An end-of-sequence token that one prompt's greedy completion starts with: its sequences end
    at once and leave the batch; the other prompts' completions are what transformers generates."""
    from prefopt.engine.decode import DecodeState

    settings = SamplingSettings(k=2, temperature=0, max_new_tokens=10, batch_size=4)
    first = sample(model, tokenizer, prompts, settings)[0][0].token_ids[0]
    kept = []
    monkeypatch.setattr(
        DecodeState,
        "keep",
        lambda self, rows, keep=DecodeState.keep: kept.append(len(rows)) or keep(self, rows),
    )
    monkeypatch.setattr(model.generation_config, "eos_token_id", [tokenizer.eos_token_id, first])
    ours = sample(model, tokenizer, prompts, settings)
    assert kept, "finished rows should have left the batch"
    assert (
        ours[0][0].finished == "eos" and ours[0][0].token_ids == (first,) and ours[0][0].text == ""
    )
    assert tokens(ours) == tokens(
        sample(model, tokenizer, prompts, settings, backend="transformers")
    )


@pytest.mark.parametrize("new_tokens", [8, 40])  # 40: the own cache grows twice (16, 32, 64)
def test_log_probs_are_those_of_a_plain_forward(model, tokenizer, prompts, new_tokens):
    settings = SamplingSettings(k=3, max_new_tokens=new_tokens, seed=1)
    results = sample(model, tokenizer, prompts, settings)
    assert max(len(s.token_ids) for samples in results for s in samples) == new_tokens
    with torch.no_grad():
        for ids, samples in zip(prompts, results, strict=True):
            for s in samples:
                full = torch.tensor([ids + list(s.token_ids)])
                logits = model(input_ids=full).logits.float()[0, :-1]
                expected = (
                    F.log_softmax(logits, -1).gather(-1, full[0, 1:, None])[len(ids) - 1 :].sum()
                )
                assert s.logp == pytest.approx(float(expected), abs=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: the C kernels (engine/native.py)
def test_a_completion_depends_on_seed_prompt_and_k_only(model, tokenizer, prompts, precision):
    settings = SamplingSettings(k=3, max_new_tokens=8, seed=5, batch_size=4)
    sample = functools.partial(sampling.sample, precision=precision)
    together = tokens(sample(model, tokenizer, prompts, settings))
    alone = [tokens(sample(model, tokenizer, [p], settings))[0] for p in prompts]
    reordered = tokens(
        sample(
            model,
            tokenizer,
            prompts[::-1],
            SamplingSettings(k=3, max_new_tokens=8, seed=5, batch_size=2),
        )
    )[::-1]
    assert together == alone == reordered
    assert len({s for samples in together for s in samples}) > 4  # samples, not copies
    assert (
        tokens(sample(model, tokenizer, prompts, SamplingSettings(k=3, max_new_tokens=8, seed=6)))
        != together
    )
    fewer = tokens(
        sample(model, tokenizer, prompts, SamplingSettings(k=2, max_new_tokens=8, seed=5))
    )
    assert fewer == [samples[:2] for samples in together]  # completion k is the same whatever K is


def test_prompts_are_prefilled_in_packs_of_at_most_prefill_tokens(
    model, tokenizer, prompts, monkeypatch
):
    assert sampling._packs([[1] * 3, [2] * 2, [3] * 6, [4]], 5) == [
        [[1] * 3, [2] * 2], [[3] * 6], [[4]]
    ]  # fmt: skip
    settings = SamplingSettings(k=2, max_new_tokens=6, seed=2)
    one_pack = sample(model, tokenizer, prompts, settings)
    calls = []
    monkeypatch.setattr(sampling, "PREFILL_TOKENS", 4)
    monkeypatch.setattr(sampling, "_packs", lambda *a, packs=sampling._packs: calls.append(
        packs(*a)) or calls[-1])  # fmt: skip
    packs = sample(model, tokenizer, prompts, settings)
    assert tokens(packs) == tokens(one_pack)
    for ours, theirs in zip(sum(packs, []), sum(one_pack, []), strict=True):
        assert ours.logp == pytest.approx(theirs.logp, abs=1e-5)  # GEMMs round by the row count
    assert len(calls[0]) > 1
    assert all(sum(map(len, pack)) <= 4 or len(pack) == 1 for pack in calls[0])


def test_top_k_1_and_a_tiny_top_p_are_greedy(model, tokenizer, prompts):
    greedy = tokens(
        sample(model, tokenizer, prompts, SamplingSettings(k=2, temperature=0, max_new_tokens=6))
    )
    for settings in (
        SamplingSettings(k=2, top_k=1, max_new_tokens=6),
        SamplingSettings(k=2, top_p=1e-6, max_new_tokens=6),
    ):
        assert tokens(sample(model, tokenizer, prompts, settings)) == greedy


def _clean_cut(tokenizer, token_ids):
    """(n, text of the first n tokens, the text token n + 1 adds) for the first n where both read
    cleanly (byte-level tokens can decode to half a character) and the addition is new."""
    for n in range(2, len(token_ids) - 1):
        before = tokenizer.decode(token_ids[:n], skip_special_tokens=True)
        added = tokenizer.decode(token_ids[: n + 1], skip_special_tokens=True)[len(before) :]
        if added.strip() and added not in before and "\ufffd" not in before + added:
            return n, before, added
    raise AssertionError("no clean cut in the greedy completion")


def test_a_stop_string_ends_the_completion_before_it(model, tokenizer, prompts):
    free = sample(
        model, tokenizer, prompts[1:2], SamplingSettings(k=1, temperature=0, max_new_tokens=16)
    )[0][0]
    n, before, stop = _clean_cut(tokenizer, free.token_ids)
    stopped = sample(
        model,
        tokenizer,
        prompts[1:2],
        SamplingSettings(k=1, temperature=0, max_new_tokens=16, stop=(stop,)),
    )[0][0]
    assert stopped.finished == "stop" and stopped.text == before and len(stopped.token_ids) == n + 1
    assert free.finished == "length" and len(free.token_ids) == 16


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"top_p": 0}, "top_p must be in"),
        ({"temperature": -1}, "temperature must be >= 0"),
    ],
)
def test_bad_settings_name_the_setting(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**bad)


@pytest.mark.parametrize(
    "spread", [0.5, 20.0], ids=["flat: the full sort", "peaked: the top candidates"]
)
def test_the_nucleus_is_the_smallest_set_of_most_likely_tokens_holding_p(spread):
    from prefopt.generate.sampling import support

    torch.manual_seed(0)
    logits = torch.randn(5, 3000) * spread
    values, order = support(logits, SamplingSettings(top_p=0.9, temperature=1.0))
    for row, kept_values, ids in zip(logits, values, order, strict=True):
        ordered = row.softmax(-1).sort(descending=True)
        size = int((ordered.values.cumsum(0) < 0.9).sum()) + 1  # the first prefix with mass >= 0.9
        kept = kept_values > -torch.inf
        assert set(ordered.indices[:size].tolist()) == set(ids[kept].tolist())
        assert torch.equal(kept_values[kept], row[ids[kept]])


def test_top_k_and_top_p_together_keep_the_nucleus_of_the_top_k():
    from prefopt.generate.sampling import support

    torch.manual_seed(1)
    logits = torch.randn(4, 500) * 3
    values, order = support(logits, SamplingSettings(top_k=20, top_p=0.8, temperature=0.5))
    for row, kept_values, ids in zip(logits / 0.5, values, order, strict=True):
        top = row.topk(20)
        probs = top.values.softmax(-1)  # the top 20, renormalized, then their nucleus
        size = int((probs.cumsum(0) < 0.8).sum()) + 1
        assert set(ids[kept_values > -torch.inf].tolist()) == set(top.indices[:size].tolist())


def test_draws_follow_the_warped_distribution():
    """Many draws from one row: each token's frequency is its probability in the nucleus,
    renormalized (a chi-square bound), and the log-prob returned is the model's own."""
    from prefopt.generate.sampling import _draw

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    settings = SamplingSettings(top_p=0.9, temperature=1.0)
    draws = 4000
    tokens, logps = [], []
    for seed in range(draws):
        token, logp = _draw(logits, settings, [torch.Generator().manual_seed(seed)])
        tokens += token
        logps += logp
    probs = logits[0].softmax(-1)
    nucleus = int((probs.sort(descending=True).values.cumsum(0) < 0.9).sum()) + 1
    expected = torch.zeros(6)
    expected[probs.argsort(descending=True)[:nucleus]] = probs[
        probs.argsort(descending=True)[:nucleus]
    ]
    expected = expected / expected.sum() * draws
    counts = torch.bincount(torch.tensor(tokens), minlength=6).float()
    assert counts[expected == 0].sum() == 0
    seen = expected > 0
    chi_square = float((((counts - expected) ** 2)[seen] / expected[seen]).sum())
    assert chi_square < 20  # 5 degrees of freedom at most: p < 0.002
    log_probs = logits[0].log_softmax(-1)
    assert all(
        abs(logp - float(log_probs[t])) < 1e-5 for t, logp in zip(tokens, logps, strict=True)
    )


@pytest.mark.parametrize("count", [1000, 1024, 5], ids=["ragged blocks", "whole blocks", "tiny"])
def test_inverse_cdf_in_blocks_finds_the_first_index_past_u(count):
    """Against the plain softmax, cumulative sum and search: the same index for every u (but where
    u falls within float rounding of a boundary), never a token of probability 0, and the log of
    the total mass."""
    from prefopt.generate.sampling import inverse_cdf

    torch.manual_seed(count)
    values = torch.randn(64, count) * 4
    values[:, ::7] = -torch.inf  # outside the support
    uniform = torch.rand(64, 1)
    index, log_total = inverse_cdf(values, uniform, block=256)
    cumulative = values.softmax(-1).cumsum(-1)
    expected = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
    near = (cumulative.gather(1, expected.clamp(max=count - 1)) - uniform).abs() < 1e-5
    assert ((index == expected) | near).all() and (index == expected).float().mean() > 0.9
    assert torch.isfinite(values.gather(1, index)).all()
    torch.testing.assert_close(log_total.squeeze(1), values.logsumexp(-1))


def test_unrestricted_draws_follow_the_model_and_return_its_log_probs():
    from prefopt.generate.sampling import _draw

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    draws, tokens, logps = 4000, [], []
    for seed in range(draws):
        token, logp = _draw(logits, SamplingSettings(), [torch.Generator().manual_seed(seed)])
        tokens += token
        logps += logp
    expected = logits[0].softmax(-1) * draws
    counts = torch.bincount(torch.tensor(tokens), minlength=6).float()
    assert float(((counts - expected) ** 2 / expected).sum()) < 20
    log_probs = logits[0].log_softmax(-1)
    assert all(
        abs(logp - float(log_probs[t])) < 1e-5 for t, logp in zip(tokens, logps, strict=True)
    )


@pytest.mark.parametrize("count", [1000, 1024, 5], ids=["ragged blocks", "whole blocks", "tiny"])
def test_bf16_draws_in_c_are_the_blocked_inverse_cdf(count, monkeypatch):
    """bf16 logits at temperature 1 are drawn in C (engine/kernels/decode.c): for each row's own
    uniform number the index inverse_cdf finds on the same logits in float32 (but where u falls
    within float rounding of a boundary), never a token held back (-inf), the model's log-prob;
    greedy, the first largest logit."""
    from prefopt.generate.sampling import _draw, inverse_cdf

    drawn_in_c = []
    monkeypatch.setattr(
        sampling, "_draw_in_c", lambda *a, f=sampling._draw_in_c: drawn_in_c.append(1) or f(*a)
    )
    torch.manual_seed(count)
    values = (torch.randn(64, count) * 4).bfloat16()
    values[:, ::7] = -torch.inf
    generators = [torch.Generator().manual_seed(seed) for seed in range(64)]
    drawn, logps = _draw(values, SamplingSettings(), generators)
    assert drawn_in_c
    uniform = torch.cat(
        [torch.rand(1, generator=torch.Generator().manual_seed(s)) for s in range(64)]
    )
    expected, _ = inverse_cdf(values.float(), uniform.unsqueeze(1), block=256)
    drawn = torch.tensor(drawn)
    cumulative = values.float().softmax(-1).cumsum(-1)
    near = (cumulative.gather(1, expected.clamp(max=count - 1)) - uniform[:, None]).abs() < 1e-5
    assert ((drawn == expected.squeeze(1)) | near.squeeze(1)).all()
    assert (drawn == expected.squeeze(1)).float().mean() > 0.9
    assert torch.isfinite(values.float().gather(1, drawn[:, None])).all()
    log_probs = values.float().log_softmax(-1)
    torch.testing.assert_close(torch.tensor(logps), log_probs.gather(1, drawn[:, None]).squeeze(1))

    values[3, 1] = values[3, 3] = values[3].max() + 1  # a tie: the first
    greedy, logps = _draw(values, SamplingSettings(temperature=0), [])
    assert greedy == values.float().argmax(-1).tolist() and greedy[3] == 1
    torch.testing.assert_close(torch.tensor(logps), values.float().log_softmax(-1).max(-1).values)
