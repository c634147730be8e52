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


def reference_logps(
    engine: torch.nn.Module,
    datasets: list[list[TokenizedList]],
    *,
    batching: Batching,
    pad_id: int,
    device,
    cache: ReferenceCache | None,
    adapters_off: Callable | None,
    autocast: Callable = contextlib.nullcontext,
    progress: Progress | None = None,
    with_tokens: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int]:
    """One [lists, K_max] table per data set, with `with_tokens` also one [lists, K_max, T_max] of
    per-token log-probs (the engine must give them), and how many lists came from the cache (new
    entries are put in it; the caller saves it). `adapters_off()` turns the LoRA model's adapters
    off (None for full fine-tuning)."""
    tables, token_tables, hits = [], [], 0
    task = progress.add_task("reference", total=sum(map(len, datasets))) if progress else None
    advance = (lambda n: progress.advance(task, n)) if progress else (lambda n: None)
    engine.eval()
    # no_grad, not inference_mode: a sharded (FSDP) model keeps the weights it gathers here for
    # the training steps that follow, and an inference tensor cannot be saved for backward
    with torch.no_grad(), adapters_off() if adapters_off else contextlib.nullcontext():
        for examples in datasets:
            k_max = max((len(e.completion_ids) for e in examples), default=2)
            t_max = max((len(c) for e in examples for c in e.completion_ids), default=1)
            table = torch.zeros(len(examples), k_max, device=device)
            token_table = (
                torch.zeros(len(examples), k_max, t_max, device=device) if with_tokens else None
            )
            keys = [list_key(example) for example in examples] if cache is not None else []
            missing = []
            for i in range(len(examples)):
                cached = cache.get(keys[i]) if cache is not None else None
                cached_tokens = (
                    cache.get(keys[i] + _TOKENS) if cache is not None and with_tokens else None
                )
                if cached is None or (with_tokens and cached_tokens is None):
                    missing.append(i)
                    continue
                table[i, : len(cached)] = torch.tensor(cached, device=device)
                for k, values in enumerate(cached_tokens or []):
                    token_table[i, k, : len(values)] = torch.tensor(values, device=device)
                hits += 1
            advance(len(examples) - len(missing))
            for indices in batching.inference_batches(examples, subset=missing):
                batch = collate(
                    [examples[i] for i in indices],
                    indices,
                    pad_id,
                    share_prompt=batching.share_prompt,
                    pad_multiple=batching.pad_multiple,
                ).to(device)
                with autocast():
                    result = engine(batch)
                logps = result.logps.float()
                for row, i in enumerate(indices):
                    lengths = [len(c) for c in examples[i].completion_ids]
                    table[i, : len(lengths)] = logps[row, : len(lengths)]
                    if with_tokens:
                        token_table[i, : len(lengths), : result.token_logps.shape[-1]] = (
                            result.token_logps[row, : len(lengths)].float()
                        )
                    if cache is not None:
                        cache.put(keys[i], logps[row, : len(lengths)].tolist())
                        if with_tokens:
                            cache.put(
                                keys[i] + _TOKENS,
                                [token_table[i, k, :n].tolist() for k, n in enumerate(lengths)],
                            )
                advance(len(indices))
            tables.append(table)
            token_tables.append(token_table)
    engine.train()
    return (
        [t.clone() for t in tables],
        [t.clone() for t in token_tables] if with_tokens else None,
        hits,
    )


_TOKENS = "/tokens"  # the cache key of a list's per-token log-probs, beside its sums
