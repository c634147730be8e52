"""Every row of prefopt's TRL table, checked against TRL's own loss code on the same per-token
log-probs: DPOTrainer._compute_loss (with a stand-in model that returns the log-probs a fused LM
head would), CPOTrainer.cpo_loss and ORPOTrainer.odds_ratio_loss, each with a real TRL config."""

import types
from collections import defaultdict

import pytest
import torch

from prefopt.losses import ListBatch, Objective
from prefopt.losses.trl_equivalents import TRL_EQUIVALENTS

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[bench]' or '.[dev]')")
# TRL's configs set transformers' deprecated `gradient_checkpointing` themselves
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

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


def _prefopt_batch(tokens, mask, ref) -> ListBatch:
    b = len(CHOSEN)
    return ListBatch(logps=tokens.sum(1).view(2, b).T, ref_logps=ref.view(2, b).T,
                     lengths=mask.sum(1).view(2, b).T.float(),
                     token_logps=tokens.view(2, b, -1).transpose(0, 1), token_mask=mask.view(2, b, -1).transpose(0, 1))


def _trl_dpo_loss(config, tokens, mask, ref) -> float:
    """TRL's DPOTrainer._compute_loss on rows [prompt, completion], the model a stand-in."""
    rows, width = tokens.shape
    length = PROMPT + width
    completion_mask = torch.zeros(rows, length, dtype=torch.long)
    completion_mask[:, PROMPT:] = mask.long()
    log_probs = torch.zeros(rows, length - 1, dtype=tokens.dtype)
    log_probs[:, PROMPT - 1:] = tokens  # position j predicts token j + 1
    outputs = types.SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(log_probs),
                                    mean_logits=torch.zeros_like(log_probs),
                                    is_top1=torch.zeros_like(log_probs, dtype=torch.bool))
    model = types.SimpleNamespace(training=True)
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = types.SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, precompute_ref_logps=True,
        ld_alpha=config.ld_alpha, f_divergence_type=config.f_divergence_type,
        f_alpha_divergence_coef=config.f_alpha_divergence_coef, loss_types=config.loss_type,
        loss_weights=config.loss_weights or [1.0] * len(config.loss_type), beta=config.beta,
        label_smoothing=config.label_smoothing, use_weighting=config.use_weighting, args=config,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    b = rows // 2
    inputs = {"input_ids": torch.zeros(rows, length, dtype=torch.long), "attention_mask": torch.ones(rows, length),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:b], "ref_rejected_logps": ref[b:]}
    return trl.DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, False).item()


def _trl_cpo_loss(config, batch: ListBatch) -> float:
    trainer = types.SimpleNamespace(alpha=config.alpha, loss_type=config.loss_type, simpo_gamma=config.simpo_gamma,
                                    beta=config.beta, label_smoothing=config.label_smoothing,
                                    accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    from trl.experimental.cpo import CPOTrainer

    avg = batch.avg_logps()  # CPOTrainer averages log-probs for simpo
    losses, _, _ = CPOTrainer.cpo_loss(trainer, avg[:, 0], avg[:, 1])
    return losses.mean().item()


def _trl_orpo_odds_term(config, batch: ListBatch) -> float:
    from trl.experimental.orpo import ORPOTrainer

    trainer = types.SimpleNamespace(beta=config.beta, accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    avg = batch.avg_logps()
    losses = ORPOTrainer.odds_ratio_loss(trainer, avg[:, 0], avg[:, 1])[0]
    return -losses.mean().item()  # TRL's loss is its NLL minus this mean


def _config(row, tmp_path):
    if row.trainer == "DPO":
        return trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **row.config)
    module = {"CPO": "trl.experimental.cpo", "ORPO": "trl.experimental.orpo"}[row.trainer]
    config_class = getattr(__import__(module, fromlist=[f"{row.trainer}Config"]), f"{row.trainer}Config")
    return config_class(output_dir=str(tmp_path), use_cpu=True, bf16=False, **row.config)


@pytest.mark.parametrize("row", TRL_EQUIVALENTS, ids=[f"{r.trainer}-{'+'.join(r.loss)}-{i}"
                                                      for i, r in enumerate(TRL_EQUIVALENTS)])
def test_prefopt_computes_what_trl_computes(row, tmp_path):
    tokens, mask = _token_logps()
    ref = tokens.sum(1) + torch.tensor([0.7, -1.3, 2.1, 0.4, -0.6, 1.8, -2.4, 0.9])
    batch = _prefopt_batch(tokens, mask, ref)
    config = _config(row, tmp_path)
    objective = Objective(row.loss, row.loss_params)
    ours = objective(batch, train=False).loss.mean().item()
    if row.trainer == "DPO":
        theirs = _trl_dpo_loss(config, tokens, mask, ref)
    elif row.trainer == "CPO":
        theirs = _trl_cpo_loss(config, batch)
    else:
        nll = -batch.logps[:, 0].sum() / batch.lengths[:, 0].sum()  # prefopt's completion-only NLL, tokens form
        ours, theirs = ours - nll.item(), row.loss_params["orpo"]["odds_weight"] / config.beta * \
            _trl_orpo_odds_term(config, batch)
    assert ours == pytest.approx(theirs, rel=2e-6, abs=1e-6), row


def test_trl_discopop_overflows_where_prefopt_stays_finite(tmp_path):
    """TRL's DiscoPOP computes exp(−βh) unclamped: once βh < −88.7 in float32 its exp overflows and
    the loss is inf·0 = NaN (the modulation σ(βh/τ) is 0 there). prefopt clamps the exponent."""
    tokens, mask = _token_logps()
    ref = tokens.sum(1)
    ref[:4] += 1000.0  # chosen far below its reference: βh ≈ −100
    config = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, loss_type=["discopop"])
    assert torch.isnan(torch.tensor(_trl_dpo_loss(config, tokens, mask, ref)))
    ours = Objective("discopop", {"discopop": {"beta": 0.1}})(_prefopt_batch(tokens, mask, ref), train=False)
    assert torch.isfinite(ours.loss).all()
