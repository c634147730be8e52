"""Every row of prefopt's TRL table, checked against TRL's own loss code on the same per-token
log-probs: DPOTrainer._compute_loss (with a stand-in model that returns the log-probs a fused LM
head would), CPOTrainer.cpo_loss and ORPOTrainer.odds_ratio_loss, each with a real TRL config."""

import types
from collections import defaultdict

import pytest
import torch

from prefopt.losses import ListBatch, Objective
from prefopt.losses.base import chosen_nll
from prefopt.losses.trl_equivalents import TRL_EQUIVALENTS

trl = pytest.importorskip(
    "trl", reason="TRL is not installed (pip install -e '.[bench]' or '.[dev]')"
)
# TRL's configs set transformers' deprecated `gradient_checkpointing` themselves
pytestmark = [
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'"),
]

PROMPT = 3
CHOSEN = torch.tensor([3, 5, 2, 4])
REJECTED = torch.tensor([4, 2, 6, 4])


def _token_logps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[2B, T] per-token log-probs (chosen rows, then rejected) and their completion mask."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.cat([CHOSEN, REJECTED])
    width = int(lengths.max())
    values = -torch.rand(len(lengths), width, generator=generator) * 3  # float32, as TRL trains
    mask = torch.arange(width) < lengths.unsqueeze(1)
    return values * mask, mask


# log Σ_v π(v)² at each token (the policy's peakedness there), for WPO's weights
SQUARES = -0.5 - 2 * torch.rand(
    8, int(torch.cat([CHOSEN, REJECTED]).max()), generator=torch.Generator().manual_seed(2)
)


def _prefopt_batch(tokens, mask, ref_tokens) -> ListBatch:
    b = len(CHOSEN)
    # [2B, …] -> [B, 2, …]
    items = lambda values: values.view(2, b, *values.shape[1:]).transpose(0, 1)
    # what the engine computes (tests/engine)
    log_weights = ((tokens - SQUARES) * mask).sum(1) / mask.sum(1)
    return ListBatch(
        logps=items(tokens.sum(1)),
        ref_logps=items(ref_tokens.sum(1)),
        lengths=items(mask.sum(1).float()),
        token_logps=items(tokens),
        token_mask=items(mask),
        ref_token_logps=items(ref_tokens),
        sampling_log_weights=items(log_weights),
        prompt_logps=torch.tensor([-3.0, -1.5, -4.2, -2.0]),
        prompt_lengths=torch.full((b,), PROMPT - 1.0),
    )


def _outputs(tokens):
    """What TRL's fused LM head returns for rows [prompt, completion]: position j predicts token j + 1."""
    shifted = lambda values: torch.nn.functional.pad(values, (PROMPT - 1, 0))
    log_probs = shifted(tokens)
    return types.SimpleNamespace(
        log_probs=log_probs,
        entropy=torch.zeros_like(log_probs),
        mean_logits=torch.zeros_like(log_probs),
        log_sum_sq_probs=shifted(SQUARES),
        is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
    )


def _trl_dpo_loss(config, tokens, mask, ref_tokens) -> float:
    """TRL's DPOTrainer._compute_loss, the policy and the reference stand-ins that return the
    given per-token log-probs."""
    rows, width = tokens.shape
    length = PROMPT + width
    completion_mask = torch.zeros(rows, length, dtype=torch.long)
    completion_mask[:, PROMPT:] = mask.long()
    model = torch.nn.Module()  # TRL asks whether it is a PEFT model and whether it checkpoints
    model.is_gradient_checkpointing = False
    accelerator = types.SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x
    )
    trainer = types.SimpleNamespace(
        model=model,
        ref_model=lambda **kwargs: _outputs(ref_tokens),
        accelerator=accelerator,
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        ld_alpha=config.ld_alpha,
        f_divergence_type=config.f_divergence_type,
        f_alpha_divergence_coef=config.f_alpha_divergence_coef,
        loss_types=config.loss_type,
        loss_weights=config.loss_weights or [1.0] * len(config.loss_type),
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        use_weighting=config.use_weighting,
        args=config,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(rows, length, dtype=torch.long),
        "attention_mask": torch.ones(rows, length),
        "completion_mask": completion_mask,
    }
    return trl.DPOTrainer._compute_loss(
        trainer, lambda **kwargs: _outputs(tokens), inputs, False
    ).item()


def _trl_cpo_loss(config, batch: ListBatch) -> float:
    trainer = types.SimpleNamespace(
        alpha=config.alpha,
        loss_type=config.loss_type,
        simpo_gamma=config.simpo_gamma,
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
    )
    from trl.experimental.cpo import CPOTrainer

    avg = batch.avg_logps()  # CPOTrainer averages log-probs for simpo
    losses, _, _ = CPOTrainer.cpo_loss(trainer, avg[:, 0], avg[:, 1])
    return losses.mean().item()


def _trl_orpo_odds_term(config, batch: ListBatch) -> float:
    from trl.experimental.orpo import ORPOTrainer

    trainer = types.SimpleNamespace(
        beta=config.beta, accelerator=types.SimpleNamespace(device=torch.device("cpu"))
    )
    avg = batch.avg_logps()
    losses = ORPOTrainer.odds_ratio_loss(trainer, avg[:, 0], avg[:, 1])[0]
    return -losses.mean().item()  # TRL's loss is its NLL minus this mean


def _kto_losses(row, config, tokens, mask, ref_tokens) -> tuple[float, float]:
    """prefopt's and TRL's KTOTrainer._compute_loss on the same eight single answers: the pairs'
    chosen answers desirable, their rejected ones not, each prompt's mismatched answer the one
    before it (TRL's cycling), the reference's log-probs precomputed."""
    logps, ref = tokens.sum(1), ref_tokens.sum(1)
    labels = torch.arange(len(logps)) < len(CHOSEN)
    kl_logps, kl_ref = logps.roll(1), ref.roll(1) - 3.0  # a KL estimate above 0: z₀ ≈ 0.92
    batch = ListBatch(
        logps=logps.unsqueeze(1),
        ref_logps=ref.unsqueeze(1),
        scores=labels.double().unsqueeze(1),
        mismatched_logps=kl_logps,
        mismatched_ref_logps=kl_ref,
    )
    ours = Objective(row.loss, row.loss_params)(batch, train=False).loss.mean().item()
    trainer = types.SimpleNamespace(
        model=torch.nn.Module(),
        accelerator=types.SimpleNamespace(
            device=torch.device("cpu"), gather_for_metrics=lambda x: x
        ),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        calculate_KL=config.loss_type != "apo_zero_unpaired",
        loss_type=config.loss_type,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
        _compute_kl_logps=lambda model, batch: kl_logps,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    rows, width = tokens.shape
    completion_mask = torch.zeros(rows, PROMPT + width, dtype=torch.long)
    completion_mask[:, PROMPT:] = mask.long()
    inputs = {
        "input_ids": torch.zeros(rows, PROMPT + width, dtype=torch.long),
        "attention_mask": torch.ones(rows, PROMPT + width),
        "completion_mask": completion_mask,
        "label": labels,
        "ref_logps": ref,
        "ref_KL_logps": kl_ref,
    }
    theirs = trl.KTOTrainer._compute_loss(trainer, lambda **kwargs: _outputs(tokens), inputs, False)
    return ours, theirs.item()


def _config(row, tmp_path):
    if row.trainer == "KTO":
        return trl.KTOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **row.config)
    if row.trainer == "DPO":
        return trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **row.config)
    module = {"CPO": "trl.experimental.cpo", "ORPO": "trl.experimental.orpo"}[row.trainer]
    config_class = getattr(
        __import__(module, fromlist=[f"{row.trainer}Config"]), f"{row.trainer}Config"
    )
    return config_class(output_dir=str(tmp_path), use_cpu=True, bf16=False, **row.config)


@pytest.mark.parametrize(
    "row",
    TRL_EQUIVALENTS,
    ids=[f"{r.trainer}-{'+'.join(r.loss)}-{i}" for i, r in enumerate(TRL_EQUIVALENTS)],
)
def test_prefopt_computes_what_trl_computes(row, tmp_path):
    tokens, mask = _token_logps()
    ref_tokens = (
        tokens + torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1)) * 0.5
    ) * mask
    # reorders the margins (AOT)
    ref_tokens[:, 0] += torch.tensor([6.0, -5.0, 0.5, 24.0, -3.0, 2.0, -6.0, 1.0])
    batch = _prefopt_batch(tokens, mask, ref_tokens)
    config = _config(row, tmp_path)
    if row.trainer == "KTO":
        ours, theirs = _kto_losses(row, config, tokens, mask, ref_tokens)
    else:
        ours = Objective(row.loss, row.loss_params)(batch, train=False).loss.mean().item()
    if row.trainer == "DPO":
        theirs = _trl_dpo_loss(config, tokens, mask, ref_tokens)
    elif row.trainer == "CPO":
        theirs = _trl_cpo_loss(config, batch)
    elif (
        row.trainer == "ORPO"
    ):  # the odds-ratio term here; the NLL over prompt and completion in the end-to-end test below
        nll = chosen_nll(batch, "tokens", with_prompt=True).mean()
        ours, theirs = (
            ours - nll.item(),
            row.loss_params["orpo"]["odds_weight"]
            / config.beta
            * _trl_orpo_odds_term(config, batch),
        )
    assert ours == pytest.approx(theirs, rel=2e-6, abs=1e-6), row
    if set(row.loss) & {
        "aot",
        "aot_unpaired",
    }:  # the batch's margins sort in another order than its pairs
        assert abs(ours - Objective("dpo")(batch, train=False).loss.mean().item()) > 1e-3


def test_trl_discopop_overflows_where_prefopt_stays_finite(tmp_path):
    """TRL's DiscoPOP computes exp(−βh) unclamped: once βh < −88.7 in float32 its exp overflows and
    the loss is inf·0 = NaN (the modulation σ(βh/τ) is 0 there). prefopt clamps the exponent."""
    tokens, mask = _token_logps()
    ref_tokens = tokens.clone()
    ref_tokens[:4, 0] += 1000.0  # chosen far below its reference: βh ≈ −100
    config = trl.DPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, loss_type=["discopop"]
    )
    assert torch.isnan(torch.tensor(_trl_dpo_loss(config, tokens, mask, ref_tokens)))
    ours = Objective("discopop", {"discopop": {"beta": 0.1}})(
        _prefopt_batch(tokens, mask, ref_tokens), train=False
    )
    assert torch.isfinite(ours.loss).all()


def test_orpo_with_the_prompt_in_its_nll_is_trls_orpo_on_a_real_model(tiny_model, tokenizer, model):
    """ORPO end to end on the tiny model: prefopt's engine (the shared prompt packed once, the
    prompt's tokens scored for `nll_prompt`) against ORPOTrainer.concatenated_forward on rows
    [prompt, completion] of plain transformers, then TRL's loss, NLL − mean(β·log σ(log odds))."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOTrainer

    from prefopt.data import PreferenceRecord, TokenizeSettings, tokenize_records
    from prefopt.engine.logps import collate, completion_logps

    records = [
        PreferenceRecord("apple river stone", (" good answer", " bad"), (1, 0)),
        PreferenceRecord("question please", (" yes thanks short", " no long word list"), (1, 0)),
    ]
    examples, _ = tokenize_records(records, tokenizer, TokenizeSettings())
    with torch.no_grad():
        result = completion_logps(
            model, collate(examples, [0, 1], tokenizer.pad_token_id), with_prompt=True
        )
    batch = ListBatch(
        logps=result.logps,
        lengths=result.lengths,
        prompt_logps=result.prompt_logps,
        prompt_lengths=torch.tensor([len(e.prompt_ids) - 1.0 for e in examples]),
    )
    ours = Objective("orpo", {"orpo": {"nll_prompt": True, "nll_reduction": "tokens"}})(
        batch, train=False
    )

    def rows(k: int) -> dict[str, torch.Tensor]:
        width = max(len(e.prompt_ids) + len(e.completion_ids[k]) for e in examples)
        ids = torch.full((len(examples), width), tokenizer.pad_token_id)
        labels = torch.full_like(ids, -100)
        for i, e in enumerate(examples):
            tokens = list(e.prompt_ids) + list(e.completion_ids[k])
            ids[i, : len(tokens)] = torch.tensor(tokens)
            labels[i, len(e.prompt_ids) : len(tokens)] = torch.tensor(e.completion_ids[k])
        return {
            "input_ids": ids,
            "attention_mask": (labels != -100)
            | (
                torch.arange(width)
                < torch.tensor([len(e.prompt_ids) for e in examples]).unsqueeze(1)
            ),
            "labels": labels,
        }

    inputs = {
        f"{side}_{key}": value
        for side, k in (("chosen", 0), ("rejected", 1))
        for key, value in rows(k).items()
    }
    inputs = {key: value.long() for key, value in inputs.items()}
    trainer = types.SimpleNamespace(
        is_encoder_decoder=False,
        padding_value=tokenizer.pad_token_id,
        aux_loss_enabled=False,
        beta=0.1,
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
        concatenated_inputs=ORPOTrainer.concatenated_inputs,
        get_batch_logps=ORPOTrainer.get_batch_logps,
    )
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    with torch.no_grad():
        chosen, rejected, _, _, nll = ORPOTrainer.concatenated_forward(trainer, plain, inputs)
        odds = ORPOTrainer.odds_ratio_loss(trainer, chosen, rejected)[0]
    assert ours.loss.mean().item() == pytest.approx((nll - odds.mean()).item(), rel=1e-5)
    completion_only = Objective("orpo", {"orpo": {"nll_reduction": "tokens"}})(batch, train=False)
    # the prompt counts
    assert abs(completion_only.loss.mean().item() - (nll - odds.mean()).item()) > 1e-3
