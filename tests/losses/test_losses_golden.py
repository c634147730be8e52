"""Every objective against golden numbers worked by hand from its paper's formula (the paper and
equation each loss is registered with: `prefopt losses NAME`), in float64 at atol 1e-6. Adding a
loss adds a row."""

import math

import pytest
import torch

from prefopt.losses import LOSSES, ListBatch, Objective

f64 = torch.float64


def pair(chosen, rejected, ref_chosen=None, ref_rejected=None, len_chosen=None, len_rejected=None):
    t = lambda v: None if v is None else torch.tensor([float(v)], dtype=f64)
    return ListBatch.from_pairs(
        t(chosen), t(rejected), t(ref_chosen), t(ref_rejected), t(len_chosen), t(len_rejected)
    )


# pairs (S_θ(y_w), S_θ(y_l), S_ref(y_w), S_ref(y_l), |y_w|, |y_l|): A and B disagree in sign, C has no lengths
A = pair(-10, -12, -11, -11, 5, 8)
B = pair(-15, -9, -14, -10, 6, 4)
C = pair(-10, -12, -11.5, -12.5)

# one list of three, scored 0.8 > 0.5 > 0.2: ψ, ρ = S_θ − S_ref, PRO's reward, S_θ, lengths
LIST = ListBatch(
    logps=torch.tensor([[2.0, 6.0, -4.0]], dtype=f64),
    ref_logps=torch.zeros(1, 3, dtype=f64),
    scores=torch.tensor([[0.8, 0.5, 0.2]], dtype=f64),
)
PRO_LIST = ListBatch(
    logps=torch.tensor([[-4.0, -9.0, -4.0]], dtype=f64),
    lengths=torch.tensor([[4.0, 6.0, 5.0]], dtype=f64),
    scores=torch.tensor([[2.0, 1.0, -1.0]], dtype=f64),
)
PL_ON_AVG = ListBatch(  # plain PL on A_θ = [−1, −1.5, −0.8]
    logps=torch.tensor([[-1.0, -1.5, -0.8]], dtype=f64),
    ref_logps=torch.zeros(1, 3, dtype=f64),
    scores=torch.tensor([[2.0, 1.0, -1.0]], dtype=f64),
)


# three single answers with verdicts (desirable, undesirable, undesirable): ρ = [1, −1, 1]; each
# prompt with another's answer: mismatched log-ratios [1, 0, 2] (z₀ = 1), or all below 0 (z₀ = 0)
def singles(mismatched_gaps):
    return ListBatch(
        logps=torch.tensor([[-10.0], [-12.0], [-9.0]], dtype=f64),
        ref_logps=torch.tensor([[-11.0], [-11.0], [-10.0]], dtype=f64),
        scores=torch.tensor([[1.0], [0.0], [0.0]], dtype=f64),
        mismatched_logps=torch.tensor([-20.0, -30.0, -25.0], dtype=f64),
        mismatched_ref_logps=torch.tensor([-20.0, -30.0, -25.0], dtype=f64)
        - torch.tensor(mismatched_gaps, dtype=f64),
    )


SINGLES, SINGLES_NO_KL = singles([1.0, 0.0, 2.0]), singles([-1.0, -2.0, 0.0])
_sig = lambda x: 1 / (1 + math.exp(-x))
# KTO (Ethayarajh et al. 2024, Eq. 7) at β = 0.1: desirable 1 − σ(β(ρ − z₀)), undesirable 1 − σ(β(z₀ − ρ))
KTO_Z1 = ((1 - _sig(0.0)) + (1 - _sig(0.2)) + (1 - _sig(0.0))) / 3
KTO_Z0 = ((1 - _sig(0.1)) + (1 - _sig(0.1)) + (1 - _sig(-0.1))) / 3
KTO_WEIGHTED = (2.0 * (1 - _sig(0.0)) + 0.5 * (1 - _sig(0.2)) + 0.5 * (1 - _sig(0.0))) / 3
# BCO: logit βρ − δ, δ the batch's mean reward (0.1 − 0.1 + 0.1) / 3
_delta = 0.1 / 3
BCO_SINGLES = (
    -math.log(_sig(0.1 - _delta))
    - math.log(_sig(-(-0.1 - _delta)))
    - math.log(_sig(-(0.1 - _delta)))
) / 3
APO_UNPAIRED = ((1 - _sig(0.1)) + _sig(-0.1) + _sig(0.1)) / 3

# one forget completion: NPO (Zhang et al. 2024, Eq. 3) and SimNPO (Fan et al. 2024, Eq. 4)
FORGET = ListBatch(
    logps=torch.tensor([[-20.0]], dtype=f64),
    ref_logps=torch.tensor([[-15.0]], dtype=f64),
    lengths=torch.tensor([[10.0]], dtype=f64),
    scores=torch.zeros(1, 1, dtype=f64),
)
# token probabilities [0.9, 0.5, 0.1] of one target completion: DFT (Wu et al. 2025, Eq. 9), the
# probability-based objectives of Li et al. 2025 (Beyond Log Likelihood)
_token_logps = torch.log(torch.tensor([[[0.9, 0.5, 0.1]]], dtype=f64))
TOKENS = ListBatch(
    logps=_token_logps.sum(-1), token_logps=_token_logps, scores=torch.ones(1, 1, dtype=f64)
)

# three pairs (S_w, S_l, S^ref_w, S^ref_l) whose AOT quantiles pair differently from DPO's pairs:
# policy margins S_w − S_l = [2, −6, 4], reference margins [0, −4, −1]; ρ_w = [1, −1, 3], ρ_l = [−1, 1, −2]
AOT_BATCH = ListBatch.from_pairs(
    *torch.tensor([[-10.0, -15, -8], [-12, -9, -12], [-11, -14, -11], [-11, -10, -10]], dtype=f64)
)

# LD-DPO: policy tokens chosen [−1, −2, −3], rejected [−0.5, −1, −1, −2, −1]; reference [−1.5, −2, −2] and
# [−1] × 5. The shared length is 3: with α = ½, S̃_θ(y_l) = −2.5 + ½·(−3) = −4, S̃_ref(y_l) = −3 + ½·(−2) = −4,
# so ρ̃_w = −6 + 5.5 = −0.5, ρ̃_l = 0 and L = −log σ(−0.05); α = 0: ρ̃_l = −2.5 + 3 = 0.5, L = −log σ(−0.1)
_LD_TOKENS = torch.tensor([[[-1.0, -2, -3, 0, 0], [-0.5, -1, -1, -2, -1]]], dtype=f64)
_LD_REF = torch.tensor([[[-1.5, -2, -2, 0, 0], [-1.0, -1, -1, -1, -1]]], dtype=f64)
LD = ListBatch(
    logps=_LD_TOKENS.sum(-1),
    ref_logps=_LD_REF.sum(-1),
    token_logps=_LD_TOKENS,
    token_mask=torch.tensor([[[True] * 3 + [False] * 2, [True] * 5]]),
    ref_token_logps=_LD_REF,
)

# WPO on pair A: log weights −0.5 and −1.5, so the pair's weight is e^(−2) and L = e^(−2)·0.5981388694
WPO_A = ListBatch(
    logps=A.logps,
    ref_logps=A.ref_logps,
    sampling_log_weights=torch.tensor([[-0.5, -1.5]], dtype=f64),
)

# INPO: S_θ = (−10, −12), π_ref (the anchor) (−11, −11), the previous iterate π_t (−10.5, −11.5):
# h = 2 − ητ·0 − (1 − ητ)·1 = 1.1 when ητ = 0.1; L = (1.1 − η/2)²
INPO = ListBatch(
    logps=torch.tensor([[-10.0, -12.0]], dtype=f64),
    ref_logps=torch.tensor([[-10.5, -11.5]], dtype=f64),
    anchor_logps=torch.tensor([[-11.0, -11.0]], dtype=f64),
)

# Group RL: one prompt, its answers' tokens; the sampling policy's log-probs `shift` below the
# policy's (ratio e^shift per token), the reference's 0.2 above (k3 = e^0.2 − 0.2 − 1 per token)
_RL_TOKENS = torch.tensor([[[-1.0, -2.0], [-0.5, -1.5]]], dtype=f64)


def group(scores, shift=(0.3, 0.3), tokens=_RL_TOKENS):
    old = tokens - torch.tensor(shift, dtype=f64)
    return ListBatch(logps=tokens.sum(-1), scores=torch.tensor([scores], dtype=f64),
                     token_logps=tokens, old_token_logps=old, ref_token_logps=tokens + 0.2)  # fmt: skip


RATIO, K3 = math.exp(0.3), math.exp(0.2) - 0.2 - 1
ADV = 0.5 / (math.sqrt(0.5) + 1e-4)  # GRPO's A for rewards (1, 0): ±0.5 over the group's std + 1e-4
# rewards (1, 0): the right answer's tokens clipped at 1.2, the wrong one's ratio kept (min)
CLIPPED = ADV * (RATIO - 1.2) / 2
_THREE = torch.tensor([[[-1.0, -2.0], [-0.5, -1.5], [-3.0, -1.0]]], dtype=f64)
DISCO_J = -1.5 - 10 * math.log(math.exp(-0.1) + math.exp(-0.2))  # s⁺ − τ·log Σ exp(s⁻/τ), τ = 10
DISCO_KL = math.exp(-0.3) + 0.3 - 1  # k3 of KL(π_old ‖ π) at old − new = −0.3, every token

GOLDEN = [
    # (loss, params, batch, expected)
    ("dpo", {}, A, 0.5981388694),
    ("dpo", {}, B, 0.7981388694),
    ("dpo", {}, pair(-3, -3, -3, -3), math.log(2)),
    ("cdpo", {"label_smoothing": 0.1}, A, 0.6181388694),
    ("cdpo", {"label_smoothing": 0.1}, B, 0.7781388694),
    ("robust", {"label_smoothing": 0.1}, A, 0.5731388694),
    ("robust", {"label_smoothing": 0.1}, B, 0.8231388694),
    ("ipo", {}, A, 9.0),
    ("ipo", {}, B, 49.0),
    ("ipo", {"length_normalize": True}, A, 21.855625),
    ("ipo", {"length_normalize": True}, B, 29.3402777778),
    ("dpo", {"length_normalize": True}, A, 0.6770292060),  # −log σ(0.1·(1/5 + 1/8))
    ("dpo", {"length_normalize": True}, B, 0.7141975121),  # −log σ(0.1·(−1/6 − 1/4))
    # sorted margins [−6, 2, 4] − [−4, −1, 0] = [−2, 3, 4]: mean of −log σ(−0.2), −log σ(0.3), −log σ(0.4)
    ("aot", {}, AOT_BATCH, 0.6218364554),
    ("aot", {"label_smoothing": 0.1}, AOT_BATCH, 0.6385031221),
    ("aot", {}, A, 0.5981388694),  # one pair: DPO
    # sorted ρ_w [−1, 1, 3] − sorted ρ_l [−2, −1, 1] = [1, 2, 2]
    ("aot_unpaired", {}, AOT_BATCH, 0.6135581329),
    ("aot_unpaired", {}, B, 0.7981388694),  # one pair: DPO
    ("ld_dpo", {"alpha": 0.5}, LD, 0.7184596480),
    ("ld_dpo", {"alpha": 0.0}, LD, 0.7443966600),
    ("ld_dpo", {"alpha": 1.0}, LD, math.log(2)),  # DPO: ρ_w = ρ_l = −0.5
    ("wpo", {}, WPO_A, 0.0809492933),
    # weights 1: DPO
    (
        "wpo",
        {},
        ListBatch(
            logps=A.logps, ref_logps=A.ref_logps, sampling_log_weights=torch.zeros(1, 2, dtype=f64)
        ),
        0.5981388694,
    ),
    ("inpo", {"eta": 1.0, "tau": 0.1}, INPO, 0.36),
    ("inpo", {"eta": 0.5, "tau": 0.2}, INPO, 0.7225),
    ("hinge", {}, A, 0.8),
    ("hinge", {}, B, 1.2),
    ("slic", {"delta": 1.0}, A, 0.0),
    ("slic", {"delta": 1.0}, B, 7.0),
    ("rpo", {"beta": 0.1, "eta": 0.005}, A, 0.6031388694),
    ("rpo", {"beta": 0.1, "eta": 0.005}, B, 0.8056388694),
    ("discopop", {"beta": 0.1, "tau": 0.05}, A, 0.8147631411),
    ("discopop", {"beta": 0.1, "tau": 0.05}, B, 0.8057517826),
    ("discopop", {"beta": 0.05, "tau": 0.05}, A, 0.8737921187),
    ("discopop", {"beta": 0.05, "tau": 0.05}, B, 0.7874020058),
    ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.25}, A, 1.7014132780),
    ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.25}, B, 1.3132616875),
    ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5}, A, 2.1269280110),
    ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5}, B, 1.7014132780),
    # AlphaPO, α = ¼: rewards (1 − e^(−A/4))·4 = −2.5948850828 (A = −2), −1.8199656585 (A = −1.5)
    ("simpo", {"alpha": 0.25}, A, 2.1709546809),
    ("simpo", {"alpha": 0.25}, B, 1.6248562347),
    ("orpo", {"odds_weight": 0.1}, A, 2.1042057808),
    ("orpo", {"odds_weight": 0.1}, B, 2.5840484036),
    # the prompt's 3 tokens (log-prob −4) join the NLL: (10 + 4)/(5 + 3) = 1.75, plus the odds term 0.1042057808
    (
        "orpo",
        {"nll_prompt": True},
        ListBatch(
            logps=A.logps,
            lengths=A.lengths,
            prompt_logps=torch.tensor([-4.0]),
            prompt_lengths=torch.tensor([3.0]),
        ),
        1.8542057808,
    ),
    ("nca", {"beta": 0.1}, A, 1.3387933201),
    ("nca", {"beta": 0.1}, B, 1.4387933201),
    ("infonca", {"beta": 0.1}, A, 0.5981388694),
    ("exo", {"beta": 0.1, "label_smoothing": 1e-3}, A, 2.4220146207),
    ("exo", {"beta": 0.1, "label_smoothing": 1e-3}, B, 3.1103970188),
    ("apo_zero", {}, A, 0.9500416250),
    ("apo_zero", {}, B, 1.0499583750),
    ("apo_down", {}, A, 0.9751451902),
    ("apo_down", {}, B, 1.0248548098),
    ("kto", {}, SINGLES, KTO_Z1),
    ("kto", {}, SINGLES_NO_KL, KTO_Z0),
    ("kto", {"desirable_weight": 2.0, "undesirable_weight": 0.5}, SINGLES, KTO_WEIGHTED),
    ("apo_zero_unpaired", {}, SINGLES, APO_UNPAIRED),
    ("bco", {}, SINGLES, BCO_SINGLES),
    ("bco", {"delta": 0.0}, SINGLES, (2 * -math.log(_sig(0.1)) - math.log(_sig(-0.1))) / 3),
    ("bco_pair", {}, A, 1.2887933201),
    ("bco_pair", {}, B, 1.4887933201),
    ("bco_pair", {}, C, 1.3369192960),
    ("bco_pair", {"delta": 0.0}, C, 1.3394166958),
    ("sppo_hard", {}, A, 32.0),
    ("sppo_hard", {}, B, 72.0),
    ("asft", {"odds_weight": 0.1}, A, 2.2252482459),
    ("plackett_luce", {"beta": 0.1}, A, 0.5981388694),
    ("plackett_luce", {"beta": 0.05}, LIST, 1.5600163018),
    ("plackett_luce", {"beta": 1.0}, PL_ON_AVG, 2.1427322528),
    ("pro", {"sft_weight": 0.05}, PRO_LIST, 4.4088132489),
    ("lipo_lambda", {"beta": 0.05, "discount": "ln"}, LIST, 0.2917503128),
    ("lipo_lambda", {"beta": 0.05, "discount": "log2"}, LIST, 0.2022259067),
    ("rank_dpo", {"beta": 0.05, "gain": "exp2", "discount": "ln"}, LIST, 0.2917503128),
    ("rank_dpo", {"beta": 0.05, "gain": "exp2", "discount": "log2"}, LIST, 0.2022259067),
    ("list_softmax", {"beta": 0.05}, LIST, 1.0592726510),
    ("npo", {"beta": 0.1, "target": "all"}, FORGET, 9.4815396836),
    ("simnpo", {"beta": 2.5, "gamma": 0.0, "target": "all"}, FORGET, 0.0053722788),
    ("simnpo", {"beta": 2.5, "gamma": 1.0, "target": "all"}, FORGET, 0.0145199423),
    (
        "simnpo",
        {"beta": 2.5, "gamma": 1.0, "gamma_scaled_by_beta": True, "target": "all"},
        FORGET,
        0.0631117874,
    ),
    ("sft", {}, TOKENS, 1.0336975964),
    ("fdpo", {"beta": 0.1}, A, 0.5981388694),  # reverse KL: DPO
    ("fdpo", {"beta": 0.1, "divergence": "forward_kl"}, A, 0.5825167135),  # −log σ(0.1·(e − e^−1))
    # margin (ρ_w − ρ_l) − (sp(ρ_w) − sp(ρ_l)) = 1
    ("fdpo", {"beta": 0.1, "divergence": "js"}, A, 0.6443966601),
    ("fdpo", {"beta": 0.1, "divergence": "alpha", "alpha": 0.5}, A, 0.5943491230),  # (e^½ − e^−½)/½
    # α = 1: forward KL
    ("fdpo", {"beta": 0.1, "divergence": "alpha", "alpha": 1.0}, A, 0.5825167135),
    ("grpo", {}, group([1, 0]), CLIPPED),
    ("grpo", {"aggregation": "token"}, group([1, 0]), CLIPPED),
    ("grpo", {"aggregation": "constant", "max_completion_length": 4}, group([1, 0]), CLIPPED / 2),
    ("grpo", {"beta": 0.1}, group([1, 0]), CLIPPED + 0.1 * K3 * RATIO),  # weighted by ρ
    ("grpo", {"beta": 0.1, "kl_importance_weight": False}, group([1, 0]), CLIPPED + 0.1 * K3),
    ("grpo", {"scale_rewards": "none"}, group([1, 0]), 0.5 * (RATIO - 1.2) / 2),
    # token ratios e^0.3 and e^0.1: only the first token is clipped, and only for the right answer
    ("grpo", {}, group([1, 0], (0.3, 0.1)), ADV * (RATIO - 1.2) / 4),
    # GSPO: one ratio e^0.2 per answer, past the clip
    (
        "grpo",
        {"importance_sampling": "sequence"},
        group([1, 0], (0.3, 0.1)),
        ADV * (math.exp(0.2) - 1.2) / 2,
    ),
    # the right answer is the likelier one (mean old log-prob −1.3 against −1.8): reward 1 − 0.25·1/2
    (
        "grpo",
        {"unlikeliness": 0.25, "scale_rewards": "none"},
        group([0, 1]),
        0.4375 * (RATIO - 1.2) / 2,
    ),
    ("rloo", {}, group([1, 0]), (RATIO - 1.2) / 2),  # A = ±1: the other answer is the baseline
    ("reinforce_pp", {}, group([1, 0]), CLIPPED),  # one group: the batch's std is the group's
    ("disco", {"kl_coef": 0.0}, group([1, 0, 0], tokens=_THREE), -DISCO_J),
    ("disco", {}, group([1, 0, 0], tokens=_THREE), -DISCO_J + 1e3 * (DISCO_KL - 1e-4) * DISCO_KL),
    ("dft", {}, TOKENS, 0.2238855212),
    ("prob_sft", {"objective": "nll"}, TOKENS, 1.0336975964),
    ("prob_sft", {"objective": "one_minus_p"}, TOKENS, 0.5),
    ("prob_sft", {"objective": "power", "q": 10.0}, TOKENS, 0.0883448332),
    ("prob_sft", {"objective": "one_minus_p", "keep": "top", "threshold": 0.3}, TOKENS, 0.3),
    ("prob_sft", {"objective": "nll", "keep": "bottom", "threshold": 0.5}, TOKENS, 1.4978661368),
]


@pytest.mark.parametrize(
    ("name", "params", "batch", "expected"),
    GOLDEN,
    ids=[f"{g[0]}-{i}" for i, g in enumerate(GOLDEN)],
)
def test_golden(name, params, batch, expected):
    out = LOSSES[name](batch, **params)
    assert out.loss.dtype == f64
    assert out.loss.mean().item() == pytest.approx(expected, abs=1e-6)


def test_every_registered_loss_has_a_golden_row():
    assert {row[0] for row in GOLDEN} == set(LOSSES)


def test_golden_components():
    orpo = LOSSES["orpo"](A)
    assert orpo.metrics["log_odds_ratio"].item() == pytest.approx(-0.6070690011, abs=1e-6)
    assert LOSSES["orpo"](B).metrics["log_odds_ratio"].item() == pytest.approx(
        -0.2757272374, abs=1e-6
    )
    # ASFT alignment term alone: (total − NLL) / λ
    assert (LOSSES["asft"](A, odds_weight=1.0).loss.item() - 2.0) == pytest.approx(
        2.2524824589, abs=1e-6
    )
    pro = LOSSES["pro"](PRO_LIST, sft_weight=0.05)
    assert pro.metrics["pro_ranking"].item() == pytest.approx(1.9883958386 + 1.6204174103, abs=1e-6)
    assert pro.metrics["pro_sft"].item() == pytest.approx(0.8, abs=1e-9)
    # stage 2 of the list is stage 1 of its tail (items 2 and 3)
    tail = ListBatch(
        logps=PRO_LIST.logps[:, 1:], lengths=PRO_LIST.lengths[:, 1:], scores=PRO_LIST.scores[:, 1:]
    )
    stage2 = LOSSES["pro"](tail, sft_weight=0.0).loss.item()
    assert stage2 == pytest.approx(1.6204174103, abs=1e-6)
    assert LOSSES["pro"](PRO_LIST, sft_weight=0.0).loss.item() - stage2 == pytest.approx(
        1.9883958386, abs=1e-6
    )
    # all-pairs logistic (Δ ≡ 1) is DPO summed over the list's 3 pairs
    assert 3 * LOSSES["dpo"](LIST, beta=0.05).loss.item() == pytest.approx(1.8265710980, abs=1e-6)
    # the implicit reward model: r̂ = βρ, margin, accuracy
    metrics = LOSSES["dpo"](A).metrics
    assert metrics["rewards"][0].tolist() == pytest.approx([0.1, -0.1])
    assert metrics["reward_margin"].item() == pytest.approx(0.2)
    assert metrics["reward_accuracy"].item() == 1.0
    assert LOSSES["dpo"](B).metrics["reward_accuracy"].item() == 0.0


def test_trl_rpo_alpha_is_a_mixture():
    # TRL's rpo_alpha=1: DPO + token-mean NLL of the chosen response (Liu et al. 2024, RPO, arXiv 2405.16436)
    mix = Objective({"dpo": 1.0, "sft": 1.0})
    assert mix(A).loss.item() == pytest.approx(2.5981388694, abs=1e-6)
    assert mix(B).loss.item() == pytest.approx(3.2981388694, abs=1e-6)


def test_sft_token_reduction_is_one_mean_over_the_batchs_chosen_tokens():
    """TRL's NLL: Σ of the chosen log-probs over Σ of their lengths, not a mean of per-sequence means."""
    batch = ListBatch(
        logps=torch.tensor([[-6.0, -9.0], [-2.0, -1.0]]),
        lengths=torch.tensor([[3.0, 5.0], [1.0, 4.0]]),
    )
    tokens = LOSSES["sft"](batch, nll_reduction="tokens").loss
    assert tokens.mean().item() == pytest.approx((6 + 2) / (3 + 1))
    assert LOSSES["sft"](batch).loss.mean().item() == pytest.approx((6 / 3 + 2 / 1) / 2)
    same = ListBatch(
        logps=torch.tensor([[-6.0, -9.0], [-3.0, -1.0]]),
        lengths=torch.tensor([[3.0, 5.0], [3.0, 4.0]]),
    )
    assert (
        LOSSES["sft"](same, nll_reduction="tokens").loss.tolist()
        == LOSSES["sft"](same).loss.tolist()
    )
    with pytest.raises(ValueError, match="sft: nll_reduction must be one of 'sequence', 'tokens'"):
        LOSSES["sft"](batch, nll_reduction="batch")


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_the_nll_terms_of_simpo_and_orpo_take_either_reduction(name):
    """Chosen log-probs −6 over 3 tokens and −2 over 1: per sequence (2 + 2)/2 = 2, over tokens 8/4 = 2,
    so a second batch (−6 over 3, −4 over 1: 3 against 2.5) tells them apart."""
    params = {"sft_weight": 1.0} if name == "simpo" else {}
    batch = ListBatch(
        logps=torch.tensor([[-6.0, -9.0], [-4.0, -5.0]]),
        lengths=torch.tensor([[3.0, 5.0], [1.0, 4.0]]),
    )
    rest = {
        "simpo": lambda b: LOSSES["simpo"](b).loss,  # the loss without its NLL term
        "orpo": lambda b: LOSSES["orpo"](b).loss + b.pairs.take(b.avg_logps())[0].squeeze(1),
    }[name](batch)
    sequence = LOSSES[name](batch, **params).loss - rest
    tokens = LOSSES[name](batch, **params, nll_reduction="tokens").loss - rest
    assert sequence.mean().item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert tokens.mean().item() == pytest.approx((6 + 4) / (3 + 1))
    with pytest.raises(
        ValueError, match=f"{name}: nll_reduction must be one of 'sequence', 'tokens'"
    ):
        LOSSES[name](batch, nll_reduction="batch")


def test_inpo_has_no_default_step_size_or_kl_strength():
    with pytest.raises(ValueError, match=r"inpo: eta must be given and > 0 \(no default"):
        Objective("inpo")
    with pytest.raises(ValueError, match=r"inpo: tau must be given"):
        Objective("inpo", {"inpo": {"eta": 0.5}})
    with pytest.raises(ValueError, match="inpo: needs anchor_logps"):
        LOSSES["inpo"](A, eta=1.0, tau=0.1)
