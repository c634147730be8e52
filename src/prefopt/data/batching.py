"""How tokenized lists become batches: padded row lengths, length buckets, the flat plan of every
optimizer step of a run (computed up front, so resuming is `plan[step:]`), micro-batches and
inference batches. Pure bookkeeping over list indices: no model code."""

from __future__ import annotations

import dataclasses

import torch

from prefopt.data.tokenize import TokenizedList


def row_length(example: TokenizedList, share_prompt: bool) -> int:
    """Tokens of the longest row this list puts in a batch."""
    completions = [len(c) for c in example.completion_ids]
    return len(example.prompt_ids) + (sum(completions) if share_prompt else max(completions))


def padded_length(length: int, pad_multiple: int) -> int:
    return -(-length // pad_multiple) * pad_multiple


@dataclasses.dataclass(frozen=True)
class PlannedStep:
    epoch: int
    lists: list[int]  # indices of the lists of this optimizer step


@dataclasses.dataclass(frozen=True)
class Batching:
    share_prompt: bool = True  # one packed row per list, or one row per completion
    pad_multiple: int = 16
    batch_size: int = 4  # lists per micro-batch
    accumulation: int = 1  # micro-batches per optimizer step (per process)
    eval_batch_size: int = 8
    seed: int = 0

    def bucket(self, example: TokenizedList) -> int:
        return padded_length(row_length(example, self.share_prompt), self.pad_multiple)

    def epoch_steps(
        self, examples: list[TokenizedList], epoch: int, processes: int = 1
    ) -> list[list[int]]:
        """The lists of each optimizer step of an epoch: a seeded shuffle, grouped by padded length
        (every list of a step has the same padded length), steps of batch_size × accumulation ×
        processes lists, then the steps shuffled. A bucket's last step may hold fewer lists; a step
        too small to give every process a list is left out."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        buckets: dict[int, list[int]] = {}
        for i in torch.randperm(len(examples), generator=generator).tolist():
            buckets.setdefault(self.bucket(examples[i]), []).append(i)
        size = self.batch_size * self.accumulation * processes
        steps = [
            lists[j : j + size]
            for _, lists in sorted(buckets.items())
            for j in range(0, len(lists), size)
        ]
        steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
        return [step for step in steps if len(step) >= processes]

    def step_plan(
        self, examples: list[TokenizedList], total_steps: int, processes: int = 1
    ) -> list[PlannedStep]:
        """Every optimizer step of a run, epoch after epoch, until `total_steps`."""
        plan: list[PlannedStep] = []
        epoch = 0
        while len(plan) < total_steps:
            steps = self.epoch_steps(examples, epoch, processes)
            if not steps:
                break
            plan += [PlannedStep(epoch, lists) for lists in steps]
            epoch += 1
        return plan[:total_steps]

    def micro_batches(self, step_lists: list[int], processes: int = 1) -> list[list[int]]:
        """Split a step's lists into accumulation × processes micro-batches, round-robin."""
        slots = self.accumulation * processes
        return [step_lists[j::slots] for j in range(slots) if step_lists[j::slots]]

    def inference_batches(
        self, examples: list[TokenizedList], subset: list[int] | None = None
    ) -> list[list[int]]:
        """Batches of eval_batch_size lists of one padded length, in data order."""
        buckets: dict[int, list[int]] = {}
        for i in range(len(examples)) if subset is None else subset:
            buckets.setdefault(self.bucket(examples[i]), []).append(i)
        size = self.eval_batch_size
        return [
            lists[j : j + size]
            for _, lists in sorted(buckets.items())
            for j in range(0, len(lists), size)
        ]
