"""The group RL objectives against TRL's own GRPOTrainer._compute_loss, on the same per-token
log-probs, old log-probs, reference log-probs and advantages, with a real GRPOConfig: every
loss_type prefopt maps (grpo, bnpo, dr_grpo, dapo over one batch), token and sequence importance
sampling, β = 0 and β > 0. Advantages against TRL's own nanstd."""

import types
from collections import defaultdict

import pytest
import torch

from prefopt.losses import LOSSES, ListBatch
from prefopt.losses.rl import group_advantages
from prefopt.losses.trl_equivalents import GRPO_LOSS_TYPES

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[dev]')")
from trl import GRPOConfig  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

# TRL's configs set transformers' deprecated `gradient_checkpointing` themselves
pytestmark = pytest.mark.filterwarnings(
    "ignore:`gradient_checkpointing` is deprecated:FutureWarning"
)

PROMPTS, K, T = 3, 4, 6
# prefopt's settings for each TRL loss_type: the table docs/losses.md shows
LOSS_TYPES = {name: dict(params) for name, params in GRPO_LOSS_TYPES.items()}
LOSS_TYPES["dr_grpo"]["max_completion_length"] = T


def _inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    n = PROMPTS * K
    lengths = torch.randint(1, T + 1, (n,), generator=generator)
    mask = torch.arange(T) < lengths.unsqueeze(1)
    policy = -torch.rand(n, T, generator=generator) * 3
    old = policy + (torch.rand(n, T, generator=generator) - 0.5) * 0.6  # ratios past the clip too
    ref = policy + (torch.rand(n, T, generator=generator) - 0.5)
    rewards = torch.randint(0, 3, (PROMPTS, K), generator=generator).float()
    return policy, old, ref, mask, rewards


def _trl_loss(loss_type, level, beta, weighted, epsilon_high, policy, old, ref, mask, advantages,
              tmp_path):  # fmt: skip
    args = GRPOConfig(
        output_dir=str(tmp_path), loss_type=loss_type, importance_sampling_level=level, beta=beta,
        epsilon=0.2, epsilon_high=epsilon_high, max_completion_length=T, num_generations=K,
        per_device_train_batch_size=K, report_to=[], use_cpu=True, bf16=False,
        use_bias_correction_kl=weighted,
    )  # fmt: skip
    reduce = lambda x, reduction="sum": x
    accelerator = types.SimpleNamespace(
        num_processes=1, gather=lambda x: x, reduce=reduce, gather_for_metrics=lambda x: x
    )
    fake = types.SimpleNamespace(
        args=args, loss_type=loss_type, importance_sampling_level=level, beta=beta,
        epsilon_low=args.epsilon, epsilon_high=args.epsilon_high, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, use_vllm=False, vllm_importance_sampling_correction=False,
        aux_loss_enabled=False, _entropy_bonus_enabled=False, model=types.SimpleNamespace(training=False),
        current_gradient_accumulation_steps=1, max_completion_length=T,
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=accelerator,
        _get_per_token_logps_and_entropies=lambda *a, **k: (policy, torch.zeros_like(policy), None),
    )  # fmt: skip
    n = policy.shape[0]
    inputs = {
        "prompt_ids": torch.ones(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2),
        "completion_ids": torch.ones(n, T, dtype=torch.long), "completion_mask": mask.float(),
        "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum().float(),
    }  # fmt: skip
    return GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(("beta", "weighted"), [(0.0, True), (0.04, True), (0.04, False)])
def test_grpo_equals_trls_compute_loss(loss_type, level, beta, weighted, tmp_path):
    policy, old, ref, mask, rewards = _inputs(seed=len(loss_type) + int(beta * 100))
    epsilon_high = 0.28 if loss_type == "dapo" else 0.2
    advantages = group_advantages(rewards, torch.ones(PROMPTS, K, dtype=torch.bool))
    expected = _trl_loss(loss_type, level, beta, weighted, epsilon_high, policy, old, ref, mask,
                         advantages.flatten(), tmp_path)  # fmt: skip
    items = lambda values: values.view(PROMPTS, K, T)
    batch = ListBatch(
        logps=items(policy * mask).sum(-1), scores=rewards, token_logps=items(policy),
        token_mask=items(mask), old_token_logps=items(old), ref_token_logps=items(ref),
        advantages=advantages,
    )  # fmt: skip
    params = {**LOSS_TYPES[loss_type], "importance_sampling": level, "beta": beta,
              "kl_importance_weight": weighted}  # fmt: skip
    ours = LOSSES["grpo"](batch, epsilon_high=epsilon_high, **params)
    assert ours.loss.mean().item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trls(scale):
    rewards = torch.tensor([[1.0, 0.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0], [0.0, 1.0, 0.0, 0.0]])
    flat = rewards.flatten()
    mean = rewards.mean(-1).repeat_interleave(K)
    if scale == "group":
        std = nanstd(rewards, dim=1).repeat_interleave(K)
    else:
        std = nanstd(flat).expand_as(flat)
    expected = flat - mean if scale == "none" else (flat - mean) / (std + 1e-4)
    ours = group_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool), scale=scale)
    torch.testing.assert_close(ours.flatten(), expected, rtol=1e-6, atol=1e-6)
