"""Work shared among data-parallel processes (`torchrun`, `accelerate launch`): each takes every
n-th item (an rl step's prompts, a group staying on one process; the reference pass's batches),
and what each found is put back in the order of one process, so that every process sees the same
results and decides alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Processes:
    index: int
    count: int

    @classmethod
    def of(cls, accelerator) -> Processes:
        return cls(accelerator.process_index, accelerator.num_processes)

    @property
    def main(self) -> bool:
        return self.index == 0

    def share(self, items: Sequence) -> list:
        """This process's items: every count-th from its index."""
        return list(items)[self.index :: self.count]

    def gather(self, mine: list) -> list:
        """Every process's share, in the order of the items they were shared from."""
        if self.count == 1:
            return list(mine)
        everyone: list = [None] * self.count
        dist.all_gather_object(everyone, mine)
        total = sum(len(part) for part in everyone)
        return [everyone[i % self.count][i // self.count] for i in range(total)]

    def map(self, work: Callable[[list], list], items: Sequence) -> list:
        """`work` on this process's share, the results of all put back in order."""
        return self.gather(work(self.share(items)) if self.share(items) else [])

    def main_says(self, value):
        """The main process's `value`, on every process: what it sees decides for all (a file
        another process may be writing meanwhile)."""
        if self.count == 1:
            return value
        shared = [value]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def wait(self) -> None:
        """Until every process gets here."""
        if self.count > 1:
            dist.barrier()

    def largest(self, value: int) -> int:
        """The largest of every process's `value`."""
        if self.count == 1:
            return value
        found = torch.tensor(value)
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return int(found)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the processes."""
        if self.count == 1:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value


ONE_PROCESS = Processes(index=0, count=1)
