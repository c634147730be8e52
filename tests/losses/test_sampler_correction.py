"""The importance weights of answers another engine sampled (vLLM), worked by hand: one answer of
three tokens whose last is padding, trainer/sampler ratios 2 and 1/2 on the real tokens."""

import math

import pytest
import torch

from prefopt.losses import ListBatch, Objective
from prefopt.losses.rl import sampler_correction

OLD = torch.tensor([[[math.log(0.5), math.log(0.25), 0.0]]])
SAMPLER = torch.tensor([[[math.log(0.25), math.log(0.5), -9.0]]])  # padding differs: ignored
MASK = torch.tensor([[[True, True, False]]])


@pytest.mark.parametrize(
    "mode, clip_max, clip_min, expected",
    [("token_truncate", 3.0, None, [2.0, 0.5, 1.0]),
     ("token_truncate", 1.5, 0.6, [1.5, 0.6, 1.0]),
     ("token_mask", 1.5, None, [0.0, 0.5, 1.0]),
     ("token_mask", 3.0, 0.6, [2.0, 0.0, 1.0]),
     ("sequence_truncate", 3.0, None, [1.0, 1.0, 1.0]),  # 2 × 1/2
     ("sequence_mask", 0.9, None, [0.0, 0.0, 0.0])],
)  # fmt: skip
def test_weights_by_hand(mode, clip_max, clip_min, expected):
    weights = sampler_correction(OLD, SAMPLER, MASK, mode, clip_max, clip_min)
    assert weights.shape == OLD.shape
    torch.testing.assert_close(weights[0, 0], torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_the_weights_scale_each_token_s_policy_gradient_and_carry_none_themselves():
    """GRPO with weights w: the loss of each token times its w (the KL term, absent here, is not
    weighted, as in TRL); weights of 1 change nothing."""
    torch.manual_seed(0)
    tokens = torch.randn(1, 2, 3, requires_grad=True)
    mask = torch.ones(1, 2, 3, dtype=torch.bool)

    def loss(weights):
        batch = ListBatch(logps=tokens.sum(-1), token_logps=tokens, token_mask=mask,
                          scores=torch.tensor([[1.0, 0.0]]), old_token_logps=tokens.detach(),
                          sampler_weights=weights)  # fmt: skip
        return Objective("grpo", {"grpo": {"aggregation": "token"}})(batch).loss.mean()

    plain = loss(None)
    torch.testing.assert_close(loss(torch.ones(1, 2, 3)), plain)
    doubled = loss(torch.full((1, 2, 3), 2.0))
    torch.testing.assert_close(doubled, 2 * plain)
    weights = torch.full((1, 2, 3), 2.0, requires_grad=True)
    loss(weights.detach()).backward()
    assert weights.grad is None


def test_an_unknown_mode_is_named():
    with pytest.raises(ValueError, match="vllm_importance_sampling"):
        sampler_correction(OLD, SAMPLER, MASK, "token_clip")
