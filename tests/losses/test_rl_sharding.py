"""A group RL objective over a batch split between data-parallel processes: each process's loss is
its share of the whole batch's (the denominators count every process's answers through
`ListBatch.across`), so the shares add up to the whole loss and their gradients to its gradient
(DDP then averages, which the trainer undoes). Two threads stand in for two processes, exchanging
the sums they need as gloo's all-reduce would."""

import threading

import pytest
import torch

from prefopt.losses import LOSSES, ListBatch
from prefopt.losses.rl import advantages_for

RL = sorted(name for name in LOSSES if LOSSES[name].info.family == "rl")
SETTINGS = [(name, {}) for name in RL] + [
    ("grpo", {"aggregation": "token", "epsilon_high": 0.28}),
    ("grpo", {"aggregation": "constant", "max_completion_length": 6}),
    ("grpo", {"importance_sampling": "sequence", "scale_rewards": "batch"}),
    ("disco", {"delta": 0.0}),  # the KL hinge always on
]


class AllReduce:
    """Sums what each of `parties` threads gives at its n-th call, and hands every one the sum."""

    def __init__(self, parties: int):
        self.barrier = threading.Barrier(parties)
        self.given: dict[int, list] = {}
        self.lock = threading.Lock()

    def party(self, index: int):
        calls = iter(range(10**6))

        def across(value: torch.Tensor) -> torch.Tensor:
            call = next(calls)
            with self.lock:
                self.given.setdefault(call, []).append((index, value))
            self.barrier.wait()
            total = sum(v for _, v in sorted(self.given[call], key=lambda item: item[0]))
            self.barrier.wait()
            return total

        return across


def batch_of(tokens, old, scores, mask, advantages, rows, across=None):
    return ListBatch(logps=(tokens[rows] * mask[rows]).sum(-1), scores=scores[rows],
                     token_logps=tokens[rows], token_mask=mask[rows], old_token_logps=old[rows],
                     advantages=None if advantages is None else advantages[rows],
                     across=across)  # fmt: skip


@pytest.mark.parametrize(("name", "params"), SETTINGS, ids=lambda v: str(v))
def test_shares_of_a_sharded_batch_add_up_to_the_whole(name, params):
    gen = torch.Generator().manual_seed(3)
    tokens = (-torch.rand(5, 4, 6, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    old = tokens.detach() + torch.randn(5, 4, 6, generator=gen, dtype=torch.float64) * 0.3
    mask = torch.rand(5, 4, 6, generator=gen) < 0.8
    mask[..., 0] = True
    scores = (torch.rand(5, 4, generator=gen) > 0.5).double()
    advantages = None
    if name != "disco":  # computed over the whole step before sharding, as `prefopt rl` does
        advantages = advantages_for(name, params, scores, torch.ones_like(scores, dtype=bool))
    whole = LOSSES[name](batch_of(tokens, old, scores, mask, advantages, slice(None)), **params)
    whole.loss.mean().backward()
    expected = tokens.grad.clone()
    tokens.grad = None

    reduce, shares = AllReduce(2), {}

    def process(index, rows):
        batch = batch_of(tokens, old, scores, mask, advantages, rows, reduce.party(index))
        shares[index] = LOSSES[name](batch, **params).loss.mean()

    threads = [threading.Thread(target=process, args=(i, rows))
               for i, rows in enumerate(([0, 2, 4], [1, 3]))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.testing.assert_close(shares[0] + shares[1], whole.loss.mean())
    (shares[0] + shares[1]).backward()
    torch.testing.assert_close(tokens.grad, expected)
