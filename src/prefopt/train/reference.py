"""The reference pass: log-probs of every completion under the reference, computed once without
gradients and shared among a run's processes (LoRA: the same model with adapters off; full
fine-tuning: the policy before its first step), batched by the same padded lengths as training so
that step-0 rewards are exactly zero, and reused from the on-disk cache where an earlier run
computed them; a run's fixed log-probs (the reference's, an anchor's) kept in its folder for a
resume to read."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from rich.progress import Progress

from prefopt.data import Batching, TokenizedList
from prefopt.engine.attention import attention_kernel
from prefopt.engine.logps import collate
from prefopt.engine.refcache import ReferenceCache, list_key, weights_fingerprint
from prefopt.engine.settings import ENGINE_VERSION
from prefopt.files import cache_dir, write_atomic
from prefopt.processes import ONE_PROCESS, Processes
from prefopt.train.sharding import is_sharded


@dataclasses.dataclass
class FixedLogps:
    """Log-probs of the run's lists under a model that does not change while it trains (the
    reference, or an anchor): [lists, K] sums per split, and per token ([lists, K, T]) when asked."""

    train: torch.Tensor
    eval: torch.Tensor
    tokens: dict[str, torch.Tensor] | None = None

    def of(self, split: str) -> torch.Tensor:
        return self.train if split == "train" else self.eval


def fixed_logps(
    run, name: str, engine, model, *, adapters_off, with_tokens: bool, detail: str = ""
) -> FixedLogps:
    """The train and eval lists' log-probs of `run` (prefopt train's run: its settings, data,
    accelerator and folder) under `engine` (whose weights are `model`'s): from the
    run folder's copy on resume (by then a fully fine-tuned policy is no longer its reference),
    else one pass in inference mode through the shared cache (for every later run with the same
    settings). The folder's copy is what a resume reads: written atomically."""
    device, run_copy = run.accelerator.device, run.out_dir / f"{name}_logps.pt"
    lists = [run.data.train, run.data.eval]
    if run_copy.exists():
        saved = torch.load(run_copy)
        if [saved["train"].shape[0], saved["eval"].shape[0]] == [
            len(split) for split in lists
        ] and (not with_tokens or "tokens" in saved):
            tokens = (
                {split: table.to(device) for split, table in saved["tokens"].items()}
                if with_tokens
                else None
            )
            return FixedLogps(saved["train"].to(device), saved["eval"].to(device), tokens)
    cache = reference_cache(run, model)
    with run.progress(f"{name} log-probs", transient=True) as progress:
        (train, eval_), tokens, hits = reference_logps(
            engine,
            lists,
            batching=run.batching,
            pad_id=run.data.tokenizer.pad_token_id,
            device=device,
            cache=cache,
            adapters_off=adapters_off,
            autocast=run.accelerator.autocast,
            progress=progress,
            with_tokens=with_tokens,
            processes=Processes.of(run.accelerator),
            lockstep=is_sharded(run.accelerator),
        )
    fixed = FixedLogps(
        train, eval_, None if tokens is None else dict(zip(("train", "eval"), tokens, strict=True))
    )
    saved = {"train": train.cpu(), "eval": eval_.cpu()}
    if fixed.tokens is not None:
        saved["tokens"] = {split: table.cpu() for split, table in fixed.tokens.items()}
    if run.accelerator.is_main_process:
        write_atomic(run_copy, lambda staging: torch.save(saved, staging))
        if cache is not None:
            cache.save()
    total = len(run.data.train) + len(run.data.eval)
    run.say(
        f"{name} log-probs{detail}: {hits} of {total} lists from the cache, {total - hits} computed"
    )
    return fixed


def reference_cache(run, model) -> ReferenceCache | None:
    """The shared on-disk cache of log-probs under `model`'s weights and this run's settings
    (None when the run keeps none)."""
    if not run.config.reference_cache:
        return None
    settings = run.accelerator.unwrap_model(run.trainee.engine).settings
    precision = run.trainee.precision
    key = {
        "weights": weights_fingerprint(model),
        "precision": precision,
        "share_prompt": run.config.share_prompt,
        "pad_multiple": run.config.pad_multiple,
        "engine": ENGINE_VERSION,
        "attention": attention_kernel(settings, precision, run.accelerator.device),
    }
    if settings.compile:  # compiled kernels round differently (the key of eager runs is as it was)
        key["compiled"] = True
    return ReferenceCache(cache_dir() / "reference", key)


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
    processes: Processes = ONE_PROCESS,
    lockstep: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int]:
    """One [lists, K_max] table per data set, with `with_tokens` also one [lists, K_max, T_max] of
    per-token log-probs (the engine must give them), and how many lists came from the cache (new
    entries are put in it; the caller saves it). `adapters_off()` turns the LoRA model's adapters
    off (None for full fine-tuning). Several `processes` each compute every n-th batch and add
    their tables (each list computed by one of them, as one process computes it); `lockstep`: every
    process runs as many forwards as the busiest (a sharded model's forward is collective)."""
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
            cached = ([_cached(cache, key, with_tokens) for key in keys] if cache is not None
                      else [None] * len(examples))  # fmt: skip
            missing = [i for i, found in enumerate(cached) if found is None]
            advance(len(examples) - len(missing))
            batches = list(batching.inference_batches(examples, subset=missing))
            mine = processes.share(batches)
            rounds = processes.largest(len(mine)) if lockstep else len(mine)
            for n in range(rounds):
                indices = mine[n] if n < len(mine) else batches[0]  # past its share: in step only
                batch = collate([examples[i] for i in indices], indices, pad_id,
                                share_prompt=batching.share_prompt,
                                pad_multiple=batching.pad_multiple).to(device)  # fmt: skip
                with autocast():
                    result = engine(batch)
                if n >= len(mine):
                    continue
                for row, i in enumerate(indices):
                    k = len(examples[i].completion_ids)
                    table[i, :k] = result.logps[row, :k].float()
                    if with_tokens:
                        t = result.token_logps.shape[-1]
                        token_table[i, :k, :t] = result.token_logps[row, :k].float()
                advance(len(indices))
            if processes.count > 1:  # each list's row is one process's; the others' are zeros
                table = processes.sum(table)
                token_table = processes.sum(token_table) if with_tokens else None
            for i, found in enumerate(cached):
                if found is not None:
                    hits += 1
                    table[i, : len(found[0])] = torch.tensor(found[0], device=device)
                    for k, values in enumerate(found[1] or []):
                        token_table[i, k, : len(values)] = torch.tensor(values, device=device)
                elif cache is not None:
                    _remember(cache, keys[i], examples[i], table, token_table, i)
            tables.append(table)
            token_tables.append(token_table)
    engine.train()
    return (
        [t.clone() for t in tables],
        [t.clone() for t in token_tables] if with_tokens else None,
        hits,
    )


def _cached(cache: ReferenceCache, key: str, with_tokens: bool) -> tuple | None:
    """(log-probs, per-token log-probs or None) of a list in the cache, or None."""
    sums = cache.get(key)
    tokens = cache.get(key + _TOKENS) if with_tokens else None
    if sums is None or (with_tokens and tokens is None):
        return None
    return sums, tokens


def _remember(cache: ReferenceCache, key: str, example, table, token_table, i: int) -> None:
    lengths = [len(c) for c in example.completion_ids]
    cache.put(key, table[i, : len(lengths)].tolist())
    if token_table is not None:
        cache.put(key + _TOKENS, [token_table[i, k, :n].tolist() for k, n in enumerate(lengths)])


_TOKENS = "/tokens"  # the cache key of a list's per-token log-probs, beside its sums
