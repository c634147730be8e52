"""The reference pass: log-probs of every completion under the reference, computed once in
inference mode (LoRA: the same model with adapters off; full fine-tuning: the policy before its
first step), batched by the same padded lengths as training so that step-0 rewards are exactly
zero, and reused from the on-disk cache where an earlier run computed them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from rich.progress import Progress

from prefopt.data import Batching, TokenizedList
from prefopt.engine.logps import collate
from prefopt.engine.refcache import ReferenceCache, list_key


def reference_logps(engine: torch.nn.Module, datasets: list[list[TokenizedList]], *, batching: Batching,
                    pad_id: int, device, cache: ReferenceCache | None, adapters_off: Callable | None,
                    autocast: Callable = contextlib.nullcontext, progress: Progress | None = None
                    ) -> tuple[list[torch.Tensor], int]:
    """One [lists, K_max] table per data set, and how many lists came from the cache (new entries
    are put in it; the caller saves it). `adapters_off` is the LoRA model's `disable_adapter`
    (None for full fine-tuning)."""
    tables, hits = [], 0
    task = progress.add_task("reference", total=sum(map(len, datasets))) if progress else None
    advance = (lambda n: progress.advance(task, n)) if progress else (lambda n: None)
    engine.eval()
    with torch.inference_mode(), adapters_off() if adapters_off else contextlib.nullcontext():
        for examples in datasets:
            k_max = max((len(e.completion_ids) for e in examples), default=2)
            table = torch.zeros(len(examples), k_max, device=device)
            keys = [list_key(example) for example in examples] if cache is not None else []
            missing = []
            for i in range(len(examples)):
                cached = cache.get(keys[i]) if cache is not None else None
                if cached is None:
                    missing.append(i)
                else:
                    table[i, : len(cached)] = torch.tensor(cached, device=device)
                    hits += 1
            advance(len(examples) - len(missing))
            for indices in batching.inference_batches(examples, subset=missing):
                batch = collate([examples[i] for i in indices], indices, pad_id, share_prompt=batching.share_prompt,
                                pad_multiple=batching.pad_multiple).to(device)
                with autocast():
                    logps = engine(batch).logps.float()
                for row, i in enumerate(indices):
                    k = len(examples[i].completion_ids)
                    table[i, :k] = logps[row, :k]
                    if cache is not None:
                        cache.put(keys[i], logps[row, :k].tolist())
                advance(len(indices))
            tables.append(table)
    engine.train()
    return [table.clone() for table in tables], hits
