"""Properties every objective must keep: pairs from lists, K=2 reductions, masking equals slicing,
finite values and gradients at extremes, float32 compute, precise errors, checkpointable state."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefopt.losses import LOSSES, ListBatch, Objective

SHIFT_INVARIANT = ["dpo", "cdpo", "robust", "ipo", "hinge", "discopop", "exo"]  # depend on h alone
REQUIRED = {"inpo": {"eta": 0.5, "tau": 0.2}}  # losses whose parameters have no default


def run_loss(name, batch, **params):
    if LOSSES[name].info.family == "unpaired":
        batch = as_verdicts(batch)
    return LOSSES[name](batch, **{**REQUIRED.get(name, {}), **params})


def as_verdicts(batch: ListBatch) -> ListBatch:
    """The batch as single answers with verdicts: each list's best answers desirable, the rest
    not; each prompt's mismatched answer the previous list's first."""
    roll = lambda values: None if values is None else values[:, 0].roll(1).detach()
    return dataclasses.replace(
        batch,
        scores=batch.best.to(batch.logps.dtype),
        mismatched_logps=roll(batch.logps),
        mismatched_ref_logps=roll(batch.ref_logps),
    )


def random_batch(batch=3, k=3, tokens=5, seed=0, dtype=torch.float64, sorted_scores=True):
    """A batch whose sequence log-probs are sums of a leaf token tensor, so every loss
    (sequence- or token-level) back-propagates to the same leaf."""
    gen = torch.Generator().manual_seed(seed)
    token_logps = (-torch.rand(batch, k, tokens, generator=gen, dtype=dtype) * 3).requires_grad_()
    token_mask = torch.ones(batch, k, tokens, dtype=torch.bool)
    for b in range(batch):
        for i in range(k):
            token_mask[b, i, 1 + (b + i) % tokens :] = False
    scores = torch.rand(batch, k, generator=gen, dtype=dtype) + 0.1
    if sorted_scores:
        scores = scores.sort(dim=1, descending=True).values
    ref_logps = -torch.rand(batch, k, generator=gen, dtype=dtype) * 3
    return token_logps, dict(ref_logps=ref_logps, scores=scores, token_mask=token_mask)


def spread(ref_logps, token_mask):
    """Per-token reference log-probs that sum to `ref_logps`, evenly over each item's tokens."""
    return ref_logps.unsqueeze(-1) * token_mask / token_mask.sum(-1, keepdim=True).clamp(min=1)


def weights(token_logps, token_mask):
    """Log sampling weights of WPO's form, a mean per token (the policy's peakedness taken as 1)."""
    return (token_logps.detach() * token_mask).sum(-1) / token_mask.sum(-1).clamp(min=1)


def build(token_logps, ref_logps, scores, token_mask, mask=None):
    return ListBatch(
        logps=(token_logps * token_mask).sum(-1),
        ref_logps=ref_logps,
        scores=scores,
        mask=mask,
        token_logps=token_logps,
        token_mask=token_mask,
        ref_token_logps=spread(ref_logps, token_mask),
        sampling_log_weights=weights(token_logps, token_mask),
        anchor_logps=ref_logps * 1.1,
    )


@pytest.mark.parametrize("name", SHIFT_INVARIANT)
def test_identical_chosen_and_rejected_cancel_exactly(name):
    logps = torch.tensor([-7.5], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-6.0], dtype=torch.float64)
    length = torch.tensor([4.0], dtype=torch.float64)
    batch = ListBatch.from_pairs(logps, logps, ref, ref, length, length)
    loss = LOSSES[name](batch).loss.sum()
    loss.backward()
    assert logps.grad.item() == 0.0
    if name == "dpo":
        assert loss.item() == pytest.approx(math.log(2), abs=1e-12)


def test_dpo_symmetry():
    beta = 0.1
    chosen, rejected = (
        torch.tensor([-10.0], dtype=torch.float64),
        torch.tensor([-12.0], dtype=torch.float64),
    )
    ref = torch.tensor([-11.0], dtype=torch.float64)
    forward = LOSSES["dpo"](ListBatch.from_pairs(chosen, rejected, ref, ref), beta=beta).loss
    swapped = LOSSES["dpo"](ListBatch.from_pairs(rejected, chosen, ref, ref), beta=beta).loss
    h = 2.0
    assert (forward - swapped).item() == pytest.approx(-beta * h, abs=1e-12)


def test_pairwise_loss_on_a_list_averages_its_pairs():
    token_logps, fields = random_batch(batch=2, k=4)
    batch = build(token_logps, **fields)
    full = LOSSES["dpo"](batch).loss
    per_pair = []
    for i in range(4):
        for j in range(i + 1, 4):
            idx = [i, j]
            sub = ListBatch(
                logps=batch.logps[:, idx],
                ref_logps=batch.ref_logps[:, idx],
                scores=batch.scores[:, idx],
            )
            per_pair.append(LOSSES["dpo"](sub).loss)
    torch.testing.assert_close(full, torch.stack(per_pair).mean(0))


def test_ties_make_no_pair():
    batch = ListBatch(
        logps=torch.tensor([[-1.0, -2.0, -3.0]]),
        ref_logps=torch.zeros(1, 3),
        scores=torch.tensor([[1.0, 1.0, 0.0]]),
    )
    assert batch.pairs.valid.sum().item() == 2
    all_tied = ListBatch(
        logps=torch.tensor([[-1.0, -2.0]]), ref_logps=torch.zeros(1, 2), scores=torch.ones(1, 2)
    )
    out = LOSSES["dpo"](all_tied)
    assert out.loss.item() == 0.0 and math.isnan(out.metrics["reward_accuracy"].item())


def _pair_batch(seed=1):
    token_logps, fields = random_batch(batch=4, k=2, seed=seed)
    fields["scores"] = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(4, 2)
    return build(token_logps, **fields)


@pytest.mark.parametrize(
    ("listwise", "params", "pairwise", "pair_params"),
    [
        ("plackett_luce", {"beta": 0.3}, "dpo", {"beta": 0.3}),
        ("list_softmax", {"beta": 0.3}, "dpo", {"beta": 0.3}),
        ("infonca", {"beta": 0.3}, "dpo", {"beta": 0.3}),
        ("rank_dpo", {"beta": 0.3, "gain": "rank"}, "dpo", {"beta": 0.3}),
        ("pro", {"sft_weight": 0.0}, "simpo", {"beta": 1.0, "gamma_beta_ratio": 0.0}),
    ],
)
def test_listwise_at_k2_reduces_to_pairwise(listwise, params, pairwise, pair_params):
    batch = _pair_batch()
    expected = LOSSES[pairwise](batch, **pair_params).loss
    if listwise == "rank_dpo":  # Δ = |G_1 − G_2|·|1/ln 2 − 1/ln 3| for a pair
        expected = expected * (1 / math.log(2) - 1 / math.log(3))
    torch.testing.assert_close(LOSSES[listwise](batch, **params).loss, expected)


def test_nca_at_k2_is_the_pairwise_formula():
    batch = _pair_batch()
    r = 0.1 * (batch.logps - batch.ref_logps)
    logsig = torch.nn.functional.logsigmoid
    expected = -logsig(r[:, 0]) - 0.5 * logsig(-r[:, 0]) - 0.5 * logsig(-r[:, 1])
    torch.testing.assert_close(LOSSES["nca"](batch).loss, expected)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masking_equals_slicing(name):
    """A padded item full of garbage and padded token positions change neither loss nor grads."""
    token_logps, fields = random_batch(batch=3, k=3, tokens=4, seed=2)
    sliced = run_loss(name, build(token_logps, **fields))
    sliced.loss.sum().backward()
    expected_grad = token_logps.grad.clone()

    padded_tokens = torch.cat(
        [token_logps.detach(), torch.full((3, 3, 2), float("nan"), dtype=torch.float64)], 2
    )
    padded_tokens = torch.cat(
        [padded_tokens, torch.full((3, 1, 6), 123.0, dtype=torch.float64)], 1
    ).requires_grad_()
    token_mask = torch.cat([fields["token_mask"], torch.ones(3, 3, 2, dtype=torch.bool)], 2)
    token_mask[:, :, 4:] = False
    token_mask = torch.cat([token_mask, torch.ones(3, 1, 6, dtype=torch.bool)], 1)
    mask = torch.tensor([[True, True, True, False]]).expand(3, 4)
    ref_tokens = torch.cat(
        [
            spread(fields["ref_logps"], fields["token_mask"]),
            torch.full((3, 3, 2), float("nan"), dtype=torch.float64),
        ],
        2,
    )
    ref_tokens = torch.cat([ref_tokens, torch.full((3, 1, 6), -7.0, dtype=torch.float64)], 1)
    padded = ListBatch(
        logps=(padded_tokens.nan_to_num(0.0) * token_mask).sum(-1),
        ref_logps=torch.cat(
            [fields["ref_logps"], torch.full((3, 1), -1e6, dtype=torch.float64)], 1
        ),
        scores=torch.cat([fields["scores"], torch.full((3, 1), 99.0, dtype=torch.float64)], 1),
        anchor_logps=torch.cat(
            [fields["ref_logps"] * 1.1, torch.full((3, 1), float("nan"), dtype=torch.float64)], 1
        ),
        mask=mask,
        token_logps=padded_tokens,
        token_mask=token_mask,
        ref_token_logps=ref_tokens,
        sampling_log_weights=torch.cat(
            [
                weights(token_logps, fields["token_mask"]),
                torch.full((3, 1), float("nan"), dtype=torch.float64),
            ],
            1,
        ),
    )
    out = run_loss(name, padded)
    torch.testing.assert_close(out.loss, sliced.loss)
    out.loss.sum().backward()
    torch.testing.assert_close(padded_tokens.grad[:, :3, :4], expected_grad)
    assert torch.all(padded_tokens.grad[:, 3] == 0) and torch.all(padded_tokens.grad[:, :, 4:] == 0)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("extreme", [1e4, -1e4, 100.0, -100.0])
def test_finite_at_extreme_margins_in_float32(name, extreme):
    token_logps = torch.tensor(
        [[[-1e-9, -1e-9], [extreme if extreme < 0 else -1e-3, -1e4]]], requires_grad=True
    )
    ref = torch.tensor([[-extreme if extreme > 0 else 0.0, 0.0]])
    batch = ListBatch(
        logps=token_logps.sum(-1),
        ref_logps=ref,
        scores=torch.tensor([[1.0, 0.0]]),
        token_logps=token_logps,
        ref_token_logps=spread(ref, torch.ones(1, 2, 2, dtype=torch.bool)),
        sampling_log_weights=weights(token_logps, torch.ones(1, 2, 2, dtype=torch.bool)),
        anchor_logps=ref * 0.5,
    )
    loss = run_loss(name, batch).loss
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    assert torch.isfinite(token_logps.grad).all(), token_logps.grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_inputs_compute_in_float32(name):
    token_logps, fields = random_batch(dtype=torch.float32)
    batch = build(
        token_logps.detach().bfloat16(),
        fields["ref_logps"].bfloat16(),
        fields["scores"],
        fields["token_mask"],
    )
    out = run_loss(name, batch)
    assert out.loss.dtype == torch.float32
    assert all(v.dtype in (torch.float32, torch.bool) for v in out.metrics.values())


@pytest.mark.parametrize(
    "name", ["dpo", "ipo", "plackett_luce", "pro", "lipo_lambda", "nca", "orpo", "prob_sft"]
)
def test_gradcheck(name):
    token_logps, fields = random_batch(batch=2, k=3, tokens=3, seed=5)

    def fn(leaf):
        return LOSSES[name](build(leaf, **fields)).loss

    assert torch.autograd.gradcheck(fn, (token_logps.detach().clone().requires_grad_(),))


def test_dft_gradient_is_that_of_minus_p():
    """The weight is detached: ∇(−sg(p)·log p) = −∇p (Wu et al. 2025, DFT, Eq. 9), unlike ∇(−p·log p)."""
    grads = []
    for name, params in (("dft", {}), ("prob_sft", {"objective": "one_minus_p"})):
        token_logps, fields = random_batch(seed=7)
        LOSSES[name](build(token_logps, **fields), **params).loss.sum().backward()
        grads.append(token_logps.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: LOSSES["dpo"](b, beta=0.0), "dpo: beta must be > 0"),
        (
            lambda b: LOSSES["robust"](b, label_smoothing=0.5),
            "robust: label_smoothing must be in [0, 0.5)",
        ),
        (lambda b: LOSSES["cdpo"](b, label_smoothing=-0.1), "cdpo: label_smoothing"),
        (lambda b: LOSSES["exo"](b, label_smoothing=0.0), "exo: label_smoothing must be in (0, 1)"),
        (
            lambda b: LOSSES["lipo_lambda"](b, discount="log10"),
            "lipo_lambda: discount must be one of",
        ),
        (
            lambda b: LOSSES["dpo"](ListBatch(logps=b.logps, scores=b.scores)),
            "dpo: needs ref_logps",
        ),
        (
            lambda b: LOSSES["simpo"](ListBatch(logps=b.logps, scores=b.scores)),
            "simpo: needs lengths",
        ),
        (
            lambda b: LOSSES["dft"](ListBatch(logps=b.logps, scores=b.scores)),
            "dft: needs token_logps",
        ),
        (
            lambda b: LOSSES["pro"](
                ListBatch(logps=b.logps, lengths=b.lengths, scores=b.scores.flip(1))
            ),
            "pro: scores must be sorted best first",
        ),
        (
            lambda b: LOSSES["list_softmax"](
                ListBatch(logps=b.logps, ref_logps=b.ref_logps, scores=-b.scores)
            ),
            "list_softmax: scores must be >= 0",
        ),
    ],
)
def test_invalid_values_name_the_loss_and_parameter(call, message):
    token_logps, fields = random_batch()
    with pytest.raises(
        ValueError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        call(build(token_logps, **fields))


def test_objective_checks_at_construction():
    with pytest.raises(
        ValueError, match="unknown loss 'dpoo'; valid losses: aot, aot_unpaired, apo_down"
    ):
        Objective("dpoo")
    with pytest.raises(ValueError, match="dpo has no parameter 'betta'; valid: beta"):
        Objective("dpo", params={"dpo": {"betta": 0.1}})
    with pytest.raises(ValueError, match="dpo: beta must be > 0"):
        Objective("dpo", params={"dpo": {"beta": -1}})
    with pytest.raises(ValueError, match="'sft' is not one of the losses in use"):
        Objective("dpo", params={"sft": {}})


def test_objective_is_the_weighted_sum():
    token_logps, fields = random_batch()
    batch = build(token_logps, **fields)
    mix = Objective({"dpo": 1.0, "sft": 0.5}, params={"dpo": {"beta": 0.2}})
    out = mix(batch)
    expected = LOSSES["dpo"](batch, beta=0.2).loss + 0.5 * LOSSES["sft"](batch).loss
    torch.testing.assert_close(out.loss, expected)
    assert {"dpo/loss", "sft/loss", "dpo/reward_accuracy", "dpo/kendall_tau", "dpo/ndcg"} <= set(
        out.metrics
    )
    assert mix.needs == {"ref", "lengths"} and mix.needs_reference


def test_bco_reward_shift_state_is_saved_and_restored():
    batches = [build(*random_batch(seed=s)[:1], **random_batch(seed=s)[1]) for s in range(3)]
    first = Objective("bco_pair")
    first(batches[0])
    first(batches[1])
    resumed = Objective("bco_pair")
    resumed.load_state_dict(first.state_dict())
    torch.testing.assert_close(resumed(batches[2]).loss, first(batches[2]).loss)
    fresh = Objective("bco_pair")
    assert not torch.allclose(fresh(batches[2]).loss, resumed(batches[2]).loss)
    # evaluation reads the shift without moving it
    before = resumed.state_dict()
    resumed(batches[0], train=False)
    assert resumed.state_dict() == before


def test_metrics_rank_lists():
    batch = ListBatch(
        logps=torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]),
        ref_logps=torch.zeros(2, 3),
        scores=torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]),
    )
    metrics = LOSSES["dpo"](batch).metrics
    assert metrics["kendall_tau"].tolist() == [1.0, -1.0]
    assert metrics["ndcg"][0].item() == pytest.approx(1.0)
    assert metrics["ndcg"][1].item() < 0.7
    assert metrics["ranking_accuracy"].tolist() == [1.0, 0.0]
    # all rewards tied (policy = reference): no credit for the stored order
    tied = LOSSES["dpo"](
        ListBatch(
            logps=torch.zeros(1, 3),
            ref_logps=torch.zeros(1, 3),
            scores=torch.tensor([[3.0, 2.0, 1.0]]),
        )
    ).metrics
    random_order_dcg = (3 + 1 + 0) / 3 * sum(1 / math.log2(1 + p) for p in (1, 2, 3))
    ideal_dcg = 3 + 1 / math.log2(3)
    assert tied["ndcg"].item() == pytest.approx(random_order_dcg / ideal_dcg)
    assert tied["kendall_tau"].item() == 0.0 and tied["reward_accuracy"].item() == 0.0


@st.composite
def batches(draw):
    b, k, t = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(1, 4))
    values = st.floats(-1e4, 0.0, allow_nan=False, width=32)
    token_logps = torch.tensor(draw(st.lists(values, min_size=b * k * t, max_size=b * k * t))).view(
        b, k, t
    )
    ref = torch.tensor(draw(st.lists(values, min_size=b * k, max_size=b * k))).view(b, k)
    scores = torch.tensor(
        draw(st.lists(st.integers(0, 4), min_size=b * k, max_size=b * k)), dtype=torch.float32
    )
    scores = scores.view(b, k).sort(dim=1, descending=True).values
    scores[:, 0] += 1
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=b * k, max_size=b * k))).view(b, k)
    mask[:, 0] = True
    lengths = torch.tensor(draw(st.lists(st.integers(1, t), min_size=b * k, max_size=b * k))).view(
        b, k
    )
    token_mask = torch.arange(t).view(1, 1, t) < lengths.unsqueeze(-1)
    return token_logps, ref, scores, mask, token_mask


@pytest.mark.parametrize("name", sorted(LOSSES))
@settings(max_examples=30, deadline=None)
@given(data=batches())
def test_random_batches_never_give_nan(name, data):
    token_logps, ref, scores, mask, token_mask = data
    leaf = token_logps.clone().requires_grad_()
    batch = ListBatch(
        logps=(leaf * token_mask).sum(-1),
        ref_logps=ref,
        scores=scores,
        mask=mask,
        token_logps=leaf,
        token_mask=token_mask,
        ref_token_logps=spread(ref, token_mask),
        sampling_log_weights=weights(leaf, token_mask),
        anchor_logps=ref * 1.1,
    )
    loss = run_loss(name, batch).loss
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js", "alpha"])
def test_every_f_divergence_is_finite_at_extreme_log_ratios_and_cancels_on_identical_items(
    divergence,
):
    logps = torch.tensor(
        [[-1e4, 1e4], [1e4, -1e4], [-3.0, -3.0]], dtype=torch.float32, requires_grad=True
    )
    ref = torch.zeros(3, 2)
    out = LOSSES["fdpo"](ListBatch(logps=logps, ref_logps=ref), divergence=divergence, alpha=0.5)
    assert torch.isfinite(out.loss).all()
    (grad,) = torch.autograd.grad(out.loss.sum(), logps)
    assert torch.isfinite(grad).all()
    assert out.loss[2].item() == pytest.approx(math.log(2))  # equal items: no margin, whatever f


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_is_a_function_of_the_batchs_distributions_not_of_its_order(name):
    """Sorting over the batch: permuting the pairs permutes nothing in the mean; every pair gets a
    gradient; a batch of one pair is DPO; when sorting pairs every quantile with its own pair, DPO's
    per-pair losses come back."""
    batch = _pair_batch(seed=3)
    order = torch.tensor([2, 0, 3, 1])
    permuted = ListBatch(
        logps=batch.logps[order], ref_logps=batch.ref_logps[order], lengths=batch.lengths[order]
    )
    assert LOSSES[name](permuted).loss.mean().item() == pytest.approx(
        LOSSES[name](batch).loss.mean().item(), abs=1e-12
    )
    logps = batch.logps.detach().clone().requires_grad_(True)
    LOSSES[name](ListBatch(logps=logps, ref_logps=batch.ref_logps)).loss.mean().backward()
    assert (logps.grad.abs() > 0).all()
    for i in range(4):
        one = ListBatch(logps=batch.logps[i : i + 1], ref_logps=batch.ref_logps[i : i + 1])
        torch.testing.assert_close(LOSSES[name](one).loss, LOSSES["dpo"](one).loss)
    # identical references and margins that already sort in batch order: quantile i is pair i
    monotone = ListBatch(
        logps=torch.tensor([[-5.0, -6.0], [-4.0, -6.0], [-2.0, -6.0]], dtype=torch.float64),
        ref_logps=torch.full((3, 2), -5.0, dtype=torch.float64),
    )
    torch.testing.assert_close(LOSSES[name](monotone).loss, LOSSES["dpo"](monotone).loss)


def test_alphapo_at_small_alpha_is_simpo():
    batch = _pair_batch()
    torch.testing.assert_close(
        LOSSES["simpo"](batch, alpha=1e-7).loss, LOSSES["simpo"](batch).loss, rtol=1e-5, atol=1e-6
    )


def test_ld_dpo_is_dpo_at_alpha_1_and_on_pairs_of_equal_length():
    token_logps, fields = random_batch(batch=3, k=3, tokens=4, seed=5)
    batch = build(token_logps, **fields)
    torch.testing.assert_close(LOSSES["ld_dpo"](batch, alpha=1.0).loss, LOSSES["dpo"](batch).loss)
    equal = torch.ones(3, 3, 4, dtype=torch.bool)
    same_length = build(token_logps, fields["ref_logps"], fields["scores"], equal)
    torch.testing.assert_close(
        LOSSES["ld_dpo"](same_length, alpha=0.2).loss, LOSSES["dpo"](same_length).loss
    )
