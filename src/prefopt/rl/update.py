"""The training half of a `prefopt rl` step: advantages computed over the whole step, then
`num_iterations` passes over its groups in `minibatches` optimizer steps each. A minibatch is
trained in forward passes of about `max_tokens_per_forward` tokens whose gradients add up to the
minibatch's: every batch-wide denominator of the objective (answers, tokens, informative groups:
`ListBatch.total`) counts the whole minibatch on every process, so the split changes memory, not
the update.

Old log-probs: with one pass over a step's samples (num_iterations 1) the sampling policy is the
policy being trained, and π_old is its own log-probs, detached (ρ = 1 in value). With more passes or
minibatches π_old is one no-grad pass of the training engine before the first update. The
reference (β > 0) is the model with its adapters off (LoRA) or a frozen copy of the initial model
(full fine-tuning), one no-grad pass a step. The sampler's own sums of log-probs (the same model,
another kernel) are only compared with the engine's, as the `logp_gap` metric."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch

from prefopt.data import TokenizedList
from prefopt.engine.logps import CompletionLogps, collate
from prefopt.engine.lora import adapters_off
from prefopt.errors import TrainingError
from prefopt.losses import ListBatch
from prefopt.losses.rl import advantages_for, sampler_correction
from prefopt.processes import Processes
from prefopt.rl.policy import Group, Policy


@dataclasses.dataclass
class MicroBatch:
    """Groups of a minibatch that one forward pass trains on, collated, with their rewards and
    advantages (this process's; a process left without groups trains on a masked copy of one)."""

    collated: object
    rewards: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor | None
    sampler_logps: torch.Tensor
    tokens: int  # real tokens trained on: the answers' and each prompt's once
    old: torch.Tensor | None = None  # per-token log-probs before the step's first update
    ref: torch.Tensor | None = None  # per-token log-probs under the reference (β > 0)
    sampler_token_logps: torch.Tensor | None = None  # [B, K, T] the sampler's, where it gives them


def train_step(config, policy: Policy, objective, ids, groups: list[Group]) -> dict:
    """num_iterations passes over the step's groups, each in `minibatches` optimizer steps."""
    advantages = _advantages(config, groups)
    parts = [list(part) for part in np.array_split(range(len(groups)), config.minibatches) if
             len(part)]  # fmt: skip
    minibatches = [_micro_batches(config, policy, ids, groups, advantages, part) for part in parts]
    every = [micro for batch in minibatches for micro in batch]
    if config.num_iterations > 1 or len(minibatches) > 1:
        with torch.no_grad(), policy.accelerator.autocast():
            for micro in every:
                micro.old = policy.engine(micro.collated).token_logps
    if "ref_tokens" in objective.needs:
        _reference_pass(policy, every)
    # a minibatch's denominators: the same for every pass over it
    sums = [_whole_batch_sums(objective, batch, policy.processes) if len(batch) > 1 else None
            for batch in minibatches]  # fmt: skip
    updates = [
        _update(config, policy, objective, batch, batch_sums)
        for _ in range(config.num_iterations)
        for batch, batch_sums in zip(minibatches, sums, strict=True)
    ]
    last = updates[-len(minibatches) :]  # the last pass
    metrics = {key: float(np.nanmean([u[key] for u in last])) for key in last[0]}
    gathered = policy.processes.sum(torch.tensor(float(sum(m.tokens for m in every))))
    return {**metrics, "train_tokens": int(gathered), "groups_trained": len(groups),
            "forward_passes": len(every)}  # fmt: skip


def _advantages(config, groups: list[Group]) -> torch.Tensor:
    """[G, K] over the whole step, before any update. The unlikeliness shaping ranks answers by
    their mean token log-prob under the policy that sampled them (the sampler's)."""
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
    mask = torch.ones_like(rewards, dtype=torch.bool)
    mean_old = torch.tensor(
        [[s.logp / max(len(s.token_ids), 1) for s in g.samples] for g in groups]
    )
    return advantages_for(config.objective, config.loss_params, rewards, mask, mean_old)


def _micro_batches(config, policy: Policy, ids, groups: list[Group], advantages,
                   indices: list[int]) -> list[MicroBatch]:  # fmt: skip
    """This process's groups among `indices`, in forward passes of about `max_tokens_per_forward`
    tokens (a group larger than that alone), as many passes on every process (a sharded model's
    forward is collective)."""
    mine = policy.processes.share(indices)
    parts: list[list[int]] = [[]]
    budget, size = config.forward_tokens, 0
    for i in mine:
        tokens = len(ids[groups[i].prompt]) + sum(len(s.token_ids) for s in groups[i].samples)
        if budget is not None and parts[-1] and size + tokens > budget:
            parts.append([])
            size = 0
        parts[-1].append(i)
        size += tokens
    parts += [[] for _ in range(policy.processes.largest(len(parts)) - len(parts))]
    return [_micro_batch(config, policy, ids, groups, advantages, part or indices[:1],
                         masked=not part) for part in parts]  # fmt: skip


def _micro_batch(config, policy: Policy, ids, groups: list[Group], advantages, chosen: list[int],
                 masked: bool) -> MicroBatch:  # fmt: skip
    """The groups `chosen`, collated; `masked`: no loss, no gradient (the process has no groups
    for this pass, and takes part in it all the same)."""
    picked = [groups[i] for i in chosen]
    examples = [TokenizedList(prompt_ids=tuple(ids[g.prompt]),
                              completion_ids=tuple(tuple(s.token_ids) for s in g.samples),
                              scores=tuple(g.rewards)) for g in picked]  # fmt: skip
    device = policy.accelerator.device
    collated = collate(examples, list(range(len(examples))), policy.tokenizer.pad_token_id,
                       share_prompt=True, pad_multiple=16).to(device)  # fmt: skip
    rewards = torch.tensor([g.rewards for g in picked], dtype=torch.float32, device=device)
    keep = [[not masked and (not config.mask_truncated or s.finished != "length")
             for s in g.samples] for g in picked]  # fmt: skip
    sampler_logps = torch.tensor([[s.logp for s in g.samples] for g in picked], device=device)
    tokens = 0 if masked else int(collated.lengths.sum()) + sum(len(ids[g.prompt]) for g in picked)
    return MicroBatch(collated, rewards, torch.tensor(keep, device=device),
                      None if advantages is None else advantages[chosen].to(device),
                      sampler_logps, tokens, sampler_token_logps=_sampler_token_logps(picked, device))  # fmt: skip


def _sampler_token_logps(groups: list[Group], device) -> torch.Tensor | None:
    """[B, K, T] each sampled token's log-prob under the sampler, where it gives them (vLLM)."""
    samples = [s for g in groups for s in g.samples]
    if any(s.token_logps is None for s in samples):
        return None
    width = max(1, *(len(s.token_logps) for s in samples))
    table = torch.zeros(len(groups), len(groups[0].samples), width, device=device)
    for b, group in enumerate(groups):
        for k, answer in enumerate(group.samples):
            table[b, k, : len(answer.token_logps)] = torch.tensor(answer.token_logps)
    return table


def _reference_pass(policy: Policy, every: list[MicroBatch]) -> None:
    """Each micro-batch's per-token log-probs under the reference: the policy with its adapters
    off (LoRA), else the initial model's frozen copy."""
    engine = policy.reference or policy.engine
    off = adapters_off(policy.engine) if policy.reference is None else contextlib.nullcontext()
    with torch.no_grad(), policy.accelerator.autocast(), off:
        for micro in every:
            micro.ref = engine(micro.collated).token_logps


def _update(config, policy: Policy, objective, batch: list[MicroBatch],
            sums: torch.Tensor | None) -> dict:  # fmt: skip
    """One optimizer step on a minibatch, its micro-batches' gradients added up. Each process's
    loss is its share of the minibatch's: the objective's denominators count every process's
    answers, summed as it asks (one pass) or given as the whole minibatch's `sums` (several);
    DDP averages the gradients over processes, hence the factor."""
    processes, accelerator = policy.processes, policy.accelerator
    live = processes.sum if processes.count > 1 else None
    counters = [live] * len(batch) if sums is None else [_Sums(sums) for _ in batch]
    loss, seen = 0.0, []
    for i, (micro, across) in enumerate(zip(batch, counters, strict=True)):
        last = i == len(batch) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(policy.engine):
            with accelerator.autocast():
                result = policy.engine(micro.collated)
            weights = _sampler_weights(config, micro, result)
            out = objective(_listed(micro, result, weights, across))
            share = out.loss.mean()
            accelerator.backward(share * processes.count)
        loss = loss + share.detach()
        seen.append(_seen(micro, result, out, weights))
    loss = processes.sum(loss)
    if not torch.isfinite(loss):  # before the optimizer step: the policy is as it was
        raise TrainingError(f"the loss is {loss.item()} (non-finite); lower the learning rate")
    norm = accelerator.clip_grad_norm_(policy.params, config.max_grad_norm or float("inf"))
    policy.optimizer.step()
    policy.scheduler.step()
    policy.optimizer.zero_grad(set_to_none=True)
    policy.stale = True
    merged = {key: torch.cat([s[key] for s in seen]) for key in seen[0]}
    metrics = {key: _mean_over(processes, value) for key, value in merged.items()
               if not key.startswith("sampling/")}  # fmt: skip
    kept = merged.get("sampling/kept")
    if kept is not None and kept.numel():  # TRL's names
        metrics |= {f"sampling/importance_sampling_ratio/{name}": float(reduce(kept))
                    for name, reduce in (("min", torch.min), ("mean", torch.mean),
                                         ("max", torch.max))}  # fmt: skip
    return metrics | {"loss": loss.item(), "grad_norm": float(norm)}


def _listed(micro: MicroBatch, result: CompletionLogps, weights, across) -> ListBatch:
    return ListBatch(logps=result.logps, lengths=result.lengths, scores=micro.rewards,
                     mask=micro.mask, token_logps=result.token_logps,
                     token_mask=result.token_mask, old_token_logps=micro.old,
                     ref_token_logps=micro.ref, advantages=micro.advantages,
                     sampler_weights=weights, across=across)  # fmt: skip


def _seen(micro: MicroBatch, result, out, weights) -> dict[str, torch.Tensor]:
    """A micro-batch's per-prompt metrics (its prompts with an answer trained on), the gap between
    the sampler's and the engine's log-probs, and the importance weights of the tokens kept."""
    kept = micro.mask.any(-1)
    seen = {key: value.detach().float().cpu()[kept.cpu()] for key, value in out.metrics.items()
            if key not in ("reward", "reward_std", "zero_std")}  # fmt: skip
    seen["logp_gap"] = (micro.sampler_logps - result.logps.detach()).abs()[micro.mask].cpu()
    if weights is not None:
        seen["sampling/kept"] = weights[result.token_mask & micro.mask.unsqueeze(-1)].detach().cpu()
    return seen


class _Sums:
    """A micro-batch's `ListBatch.across`: the i-th batch-wide sum its objective asks for is the
    i-th of `sums`, the whole minibatch's."""

    def __init__(self, sums: torch.Tensor):
        self.sums, self.asked = sums, 0

    def __call__(self, value: torch.Tensor) -> torch.Tensor:
        self.asked += 1
        return self.sums[self.asked - 1].to(value.device)


def _whole_batch_sums(
    objective, batch: list[MicroBatch], processes: Processes
) -> torch.Tensor | None:
    """The batch-wide sums (`ListBatch.total`) the objective asks of a minibatch split into
    passes, each the whole minibatch's on every process (None: it asks none). They are counts
    (answers, tokens, informative groups), read from the objective run on each pass's lengths,
    rewards and masks with stand-in log-probs before any forward pass; a sum that moves with the
    log-probs (DisCO's trust region after an update) is known only after every pass, and is
    refused."""
    asked = [[_asked(objective, micro, fill) for micro in batch] for fill in (0.0, -1.0)]
    if not asked[0][0]:
        return None
    stacked = [torch.stack([torch.stack(sums) for sums in each]) for each in asked]
    if not torch.equal(*stacked):
        raise TrainingError(
            f"objective: {', '.join(objective.weights)} needs batch-wide sums of the log-probs, "
            "which passes of part of a minibatch cannot give; set max_tokens_per_forward: null"
        )
    return processes.sum(stacked[0].sum(0))


def _asked(objective, micro: MicroBatch, fill: float) -> list[torch.Tensor]:
    """The batch-wide sums the objective asks of `micro` with every log-prob `fill`."""
    lengths = micro.collated.lengths
    mask = torch.arange(max(int(lengths.max()), 1), device=lengths.device) < lengths.unsqueeze(-1)
    tokens = torch.full(mask.shape, fill, device=lengths.device)
    stand_in = CompletionLogps(logps=tokens.sum(-1), lengths=lengths.float(), token_logps=tokens,
                               token_mask=mask)  # fmt: skip
    asked: list[torch.Tensor] = []

    def record(value: torch.Tensor) -> torch.Tensor:
        asked.append(value.detach().float().cpu())
        return value

    with torch.no_grad():
        objective(_listed(micro, stand_in, None, record), train=False)
    return asked


def _sampler_weights(config, micro: MicroBatch, result) -> torch.Tensor | None:
    """The importance weights of answers vLLM sampled (None for prefopt's own sampler, whose
    log-probs are the policy's up to rounding)."""
    if micro.sampler_token_logps is None or config.vllm_importance_sampling == "none":
        return None
    old = micro.old if micro.old is not None else result.token_logps.detach()
    sampled = torch.zeros_like(old)
    width = min(old.shape[-1], micro.sampler_token_logps.shape[-1])
    sampled[..., :width] = micro.sampler_token_logps[..., :width]
    return sampler_correction(old, sampled, result.token_mask, config.vllm_importance_sampling,
                              config.vllm_importance_sampling_clip_max,
                              config.vllm_importance_sampling_clip_min)  # fmt: skip


def _mean_over(processes: Processes, values: torch.Tensor) -> float:
    """The mean of `values` over every process's."""
    values = values[~values.isnan()]
    total = processes.sum(torch.stack([values.sum(), torch.tensor(float(values.numel()))]))
    return float(total[0] / total[1]) if total[1] else float("nan")
