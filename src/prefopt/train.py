"""The training loop: one function over explicit state. Data -> tokens -> reference log-probs
(once, in inference mode) -> optimizer steps of any loss mix -> metrics, evaluation, checkpoints
that resume to the same final weights, and a final model that transformers loads alone."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prefopt.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.config import TrainConfig, save_config
from prefopt.data import TokenizeSettings, load_records, split_by_prompt, tokenize_records
from prefopt.errors import TrainingError
from prefopt.hostmem import keep_freed_memory
from prefopt.logps import CompletionLogpsModel, collate, padded_length, row_length
from prefopt.losses import ListBatch, LossOutput

# part of the reference cache's key: raise it whenever a change to the log-prob engine can change
# a list's log-probs in the last bits (cached entries from older engines would give non-zero
# step-0 rewards). 2: segment attention, per-row first call, fused LM head; 3: LM-head logits
# vocabulary-major (the logsumexp adds in another order); 4: matmul attention under bf16 on CPUs;
# 5: fused RMSNorm (prefopt.norm); 6: matmul attention from 80 queries and 128 keys; 7: the matmul
# attention's probabilities × values in bf16.
ENGINE_VERSION = 7


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    steps: int
    eval_start: dict[str, float]
    eval_end: dict[str, float]
    seconds: float
    tokens_per_second: float
    reference_seconds: float = 0.0  # the reference pass (0 when cached or reference-free)
    loop_seconds: float = 0.0  # optimizer steps, without evaluation and checkpoints


def train(config: TrainConfig, *, resume: bool = False, console: Console | None = None,
          on_step: Callable[[TrainState, dict], None] | None = None) -> TrainResult:
    # on a CPU, a step's activations page-faulted in afresh each step cost ~20% of it
    with keep_freed_memory(enabled=not torch.cuda.is_available()):
        return _train(config, resume=resume, console=console, on_step=on_step)


def _train(config: TrainConfig, *, resume: bool, console: Console | None,
           on_step: Callable[[TrainState, dict], None] | None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    from prefopt.model import LoraSettings, choose_precision, load_model, load_tokenizer

    console = console or Console()
    started = time.perf_counter()
    out_dir = Path(config.output_dir)
    on_gpu = torch.cuda.is_available()
    precision, why = choose_precision(config.precision, torch.device("cuda" if on_gpu else "cpu"))
    # accelerate keeps one mixed-precision setting per process and refuses another one: an earlier
    # run's (of another precision) is dropped here, the distributed environment kept
    AcceleratorState._reset_state()
    # without cpu=True, accelerate ignores torchrun's multi-process environment on a CPU-only machine
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not on_gpu)
    say = console.print if accelerator.is_main_process else (lambda *a, **k: None)
    _seed_everything(config.seed)
    objective = config.objective()

    tokenizer = load_tokenizer(config.model)
    train_data, eval_data = _load_data(config, tokenizer, say)
    lora = LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout,
                        tuple(config.lora_target_modules)) if config.lora else None
    model = load_model(config.model, lora=lora, gradient_checkpointing=config.gradient_checkpointing)
    engine = CompletionLogpsModel(model, chunk_tokens=config.chunk_tokens, with_tokens="tokens" in objective.needs)
    params = [p for p in engine.parameters() if p.requires_grad]
    total = sum(p.numel() for p in engine.parameters())
    say(f"model: {config.model} ({total / 1e6:.1f} M parameters, {sum(p.numel() for p in params) / 1e6:.2f} M "
        f"trained{', LoRA' if lora else ''}), precision {precision} ({why})")
    # PyTorch's fused AdamW updates every tensor in one kernel; on a CPU the default runs a Python loop
    # over the tensors (benchmarks/optimizer.py, 135 M parameters on 2 cores: 0.11 s a step against 0.76 s)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    engine, optimizer = accelerator.prepare(engine, optimizer)
    pad_id = tokenizer.pad_token_id

    processes = accelerator.num_processes
    steps_per_epoch = len(_epoch_steps(train_data, config, 0, processes))
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    scheduler = get_scheduler("constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
                              optimizer, num_warmup_steps=round(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)

    state = TrainState()
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if resume and checkpoint is None:
        say(f"[yellow]no checkpoint in {out_dir}; starting from the beginning[/]")
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, accelerator.unwrap_model(engine), optimizer, scheduler)
        state = TrainState(**saved["state"])
        objective.load_state_dict(saved["objective"])
        say(f"resumed from {checkpoint} at step {state.step}")
    else:  # a fresh start: nothing of an earlier run in this folder may leak into this one
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        (out_dir / "reference_logps.pt").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    metrics_log = _MetricsLog(out_dir / "metrics.jsonl", keep_until=state.step if checkpoint else -1,
                              enabled=accelerator.is_main_process)

    run = _Run(config, accelerator, engine, objective, optimizer, scheduler, params, state, pad_id, out_dir)
    reference_started = time.perf_counter()
    if objective.needs_reference:
        run.ref_train, run.ref_eval = _reference(out_dir, accelerator, engine, pad_id, train_data, eval_data, config,
                                                 lora is not None, precision, console, say)
    reference_seconds = time.perf_counter() - reference_started

    eval_start = run.evaluate(eval_data) if state.step == 0 else {}
    if eval_start:
        metrics_log.write({"step": 0, "split": "eval", **eval_start})
        say("eval at start: " + _brief(eval_start))
    tokens_seen, train_seconds = 0, 0.0
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console,
                        disable=not accelerator.is_main_process)
    with progress:
        task = progress.add_task("train", total=total_steps, completed=state.step, status="")
        while state.step < total_steps:
            for step_lists in _epoch_steps(train_data, config, state.epoch, processes)[state.step_in_epoch:]:
                if state.step >= total_steps:
                    break
                record, step_tokens, elapsed = run.step(step_lists, train_data)
                tokens_seen += step_tokens
                train_seconds += elapsed
                if state.step % config.log_every == 0 or state.step == total_steps:
                    metrics_log.write(record)
                progress.update(task, completed=state.step, status=_brief(record))
                if config.eval_every and state.step % config.eval_every == 0 and state.step < total_steps:
                    metrics_log.write({"step": state.step, "split": "eval", **run.evaluate(eval_data)})
                if config.save_every and state.step % config.save_every == 0 and state.step < total_steps:
                    run.checkpoint()
                if on_step is not None:
                    on_step(state, record)
            else:
                state.epoch += 1
                state.step_in_epoch = 0

    eval_end = run.evaluate(eval_data)
    if eval_end:
        metrics_log.write({"step": state.step, "split": "eval", **eval_end})
        say("eval at end:   " + _brief(eval_end))
    run.checkpoint()
    if accelerator.is_main_process:
        _save_final(accelerator.unwrap_model(engine).model, tokenizer, out_dir, merge=config.merge and lora is not None)
        say(f"saved the model to {out_dir / 'model'}" + (f" and {out_dir / 'merged'}" if config.merge and lora else ""))
    return TrainResult(output_dir=out_dir, steps=state.step, eval_start=eval_start, eval_end=eval_end,
                       seconds=time.perf_counter() - started,
                       tokens_per_second=tokens_seen / train_seconds if train_seconds else 0.0,
                       reference_seconds=reference_seconds, loop_seconds=train_seconds)


@dataclasses.dataclass
class _Run:
    """What one optimizer step, an evaluation and a checkpoint need, in one place."""

    config: TrainConfig
    accelerator: object
    engine: torch.nn.Module
    objective: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    state: TrainState
    pad_id: int
    out_dir: Path
    ref_train: torch.Tensor | None = None
    ref_eval: torch.Tensor | None = None

    def losses(self, indices: list[int], examples, ref: torch.Tensor | None, train: bool):
        collated = _collate(examples, indices, self.pad_id, self.config).to(self.accelerator.device)
        with self.accelerator.autocast():
            result = self.engine(collated)
        k = collated.mask.shape[1]
        batch = ListBatch(logps=result.logps, ref_logps=None if ref is None else ref[collated.indices, :k],
                          lengths=result.lengths, scores=collated.scores, mask=collated.mask,
                          token_logps=result.token_logps, token_mask=result.token_mask)
        return self.objective(batch, train=train), collated

    def step(self, step_lists: list[int], examples) -> tuple[dict, int, float]:
        """One optimizer step over `step_lists` (split into micro-batches and processes);
        returns its metrics record, real tokens and seconds."""
        started = time.perf_counter()
        processes = self.accelerator.num_processes
        micro = _micro_batches(step_lists, self.config, processes)[self.accelerator.process_index::processes]
        metrics = _MetricMeans()
        real_tokens = padded_tokens = 0
        for i, indices in enumerate(micro):
            sync = i == len(micro) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.engine):
                out, collated = self.losses(indices, examples, self.ref_train, train=True)
                loss = out.loss.mean()
                if not torch.isfinite(loss):
                    path = self.checkpoint()
                    raise TrainingError(f"step {self.state.step + 1}: the loss is {loss.item()} (non-finite); "
                                        f"stopped. The last good state is saved in {path}; lower the "
                                        "learning rate or check the data, then resume.")
                # every list of the step weighs the same, however the step is split into
                # micro-batches and processes (DDP averages over processes)
                self.accelerator.backward(out.loss.sum() * processes / len(step_lists))
            real_tokens += collated.real_tokens
            padded_tokens += collated.padded_tokens
            metrics.add(out)
        grad_norm = self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.step_in_epoch += 1
        elapsed = time.perf_counter() - started
        record = {"step": self.state.step, "split": "train", "epoch": self.state.epoch,
                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  "tokens_per_s": real_tokens / elapsed, "lists_per_s": len(step_lists) / elapsed,
                  "padding": padded_tokens / max(1, real_tokens + padded_tokens), **metrics.means()}
        return record, real_tokens, elapsed

    def evaluate(self, examples) -> dict[str, float]:
        if not examples:
            return {}
        self.engine.eval()
        metrics = _MetricMeans()
        with torch.no_grad():
            for indices in _inference_batches(examples, self.config):
                metrics.add(self.losses(indices, examples, self.ref_eval, train=False)[0])
        self.engine.train()
        return metrics.means()

    def checkpoint(self) -> Path:
        path = self.out_dir / "checkpoints" / f"step-{self.state.step}"
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.out_dir, self.accelerator.unwrap_model(self.engine), self.optimizer,
                                   self.scheduler, dataclasses.asdict(self.state), self.objective.state_dict())
        self.accelerator.wait_for_everyone()
        return path


def _load_data(config: TrainConfig, tokenizer, say):
    loaded = load_records(config.data, skip_invalid=config.skip_invalid)
    say(loaded.summary())
    if config.eval_data:
        eval_loaded = load_records(config.eval_data, skip_invalid=config.skip_invalid)
        say(eval_loaded.summary())
        train_records, eval_records = loaded.records, eval_loaded.records
    else:
        train_records, eval_records = split_by_prompt(loaded.records, config.eval_fraction, config.seed)
    settings = TokenizeSettings(config.max_prompt_tokens, config.max_completion_tokens, config.prompt_truncation,
                                config.chat_template)
    train_data, counts = tokenize_records(train_records, tokenizer, settings)
    eval_data, _ = tokenize_records(eval_records, tokenizer, settings)
    sizes = sorted({len(e.completion_ids) for e in train_data})
    say(f"data: {len(train_data)} train lists, {len(eval_data)} eval lists (split by prompt), "
        f"K = {'/'.join(map(str, sizes))}; {counts.summary()}")
    return train_data, eval_data


def _reference(out_dir, accelerator, engine, pad_id, train_data, eval_data, config, lora, precision, console, say):
    """Reference log-probs of every completion, computed once in inference mode (LoRA: the same
    model with adapters off; full fine-tuning: the policy before its first step), batched by the
    same padded lengths as training so that step-0 rewards are exactly zero. Kept in the run
    folder (read back only by --resume: by then a fully fine-tuned policy is no longer the
    reference) and in the shared cache (for every later run with the same settings)."""
    from prefopt.model import cache_dir
    from prefopt.refcache import ReferenceCache, list_key, weights_fingerprint

    run_copy = out_dir / "reference_logps.pt"
    if run_copy.exists():
        saved = torch.load(run_copy)
        if saved["train"].shape[0] == len(train_data) and saved["eval"].shape[0] == len(eval_data):
            return saved["train"].to(accelerator.device), saved["eval"].to(accelerator.device)
    base = accelerator.unwrap_model(engine).model
    cache = None
    if config.reference_cache:
        setting = {"weights": weights_fingerprint(base), "precision": precision, "share_prompt": config.share_prompt,
                   "pad_multiple": config.pad_multiple, "engine": ENGINE_VERSION}
        cache = ReferenceCache(cache_dir() / "reference", setting)
    tables, hits = [], 0
    engine.eval()
    progress = Progress(TextColumn("[bold]reference log-probs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, disable=not accelerator.is_main_process,
                        transient=True)
    with (torch.inference_mode(), base.disable_adapter() if lora else contextlib.nullcontext(), progress):
        task = progress.add_task("reference", total=len(train_data) + len(eval_data))
        for examples in (train_data, eval_data):
            k_max = max((len(e.completion_ids) for e in examples), default=2)
            table = torch.zeros(len(examples), k_max, device=accelerator.device)
            missing = []
            keys = [list_key(example) for example in examples] if cache is not None else []
            for i in range(len(examples)):
                cached = cache.get(keys[i]) if cache is not None else None
                if cached is None:
                    missing.append(i)
                else:
                    table[i, : len(cached)] = torch.tensor(cached, device=accelerator.device)
                    hits += 1
            progress.advance(task, len(examples) - len(missing))
            for indices in _inference_batches(examples, config, subset=missing):
                collated = _collate(examples, indices, pad_id, config).to(accelerator.device)
                with accelerator.autocast():
                    logps = engine(collated).logps.float()
                for row, i in enumerate(indices):
                    k = len(examples[i].completion_ids)
                    table[i, :k] = logps[row, :k]
                    if cache is not None:
                        cache.put(keys[i], logps[row, :k].tolist())
                progress.advance(task, len(indices))
            tables.append(table)
    engine.train()
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"train": tables[0].cpu(), "eval": tables[1].cpu()}, run_copy)
        if cache is not None:
            cache.save()
    total = len(train_data) + len(eval_data)
    say(f"reference log-probs: {hits} of {total} lists from the cache, {total - hits} computed")
    return tables[0].clone(), tables[1].clone()


def _bucket(example, config: TrainConfig) -> int:
    return padded_length(row_length(example, config.share_prompt), config.pad_multiple)


def _epoch_steps(examples, config: TrainConfig, epoch: int, processes: int) -> list[list[int]]:
    """The lists of each optimizer step of an epoch: a seeded shuffle, grouped by padded length
    (every list of a step has the same padded length), steps of batch_size × accumulation ×
    processes lists, then the steps shuffled. A bucket's last step may hold fewer lists; a step
    too small to give every process a list is left out."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    buckets: dict[int, list[int]] = {}
    for i in torch.randperm(len(examples), generator=generator).tolist():
        buckets.setdefault(_bucket(examples[i], config), []).append(i)
    size = config.batch_size * config.gradient_accumulation_steps * processes
    steps = [lists[j: j + size] for _, lists in sorted(buckets.items()) for j in range(0, len(lists), size)]
    steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
    return [step for step in steps if len(step) >= processes]


def _micro_batches(step_lists: list[int], config: TrainConfig, processes: int) -> list[list[int]]:
    """Split a step's lists into accumulation × processes micro-batches, round-robin."""
    slots = config.gradient_accumulation_steps * processes
    return [step_lists[j::slots] for j in range(slots) if step_lists[j::slots]]


def _inference_batches(examples, config: TrainConfig, subset: list[int] | None = None) -> list[list[int]]:
    """Batches of eval_batch_size lists of one padded length, in data order."""
    buckets: dict[int, list[int]] = {}
    for i in range(len(examples)) if subset is None else subset:
        buckets.setdefault(_bucket(examples[i], config), []).append(i)
    size = config.eval_batch_size
    return [lists[j: j + size] for _, lists in sorted(buckets.items()) for j in range(0, len(lists), size)]


def _collate(examples, indices: list[int], pad_id: int, config: TrainConfig):
    return collate([examples[i] for i in indices], indices, pad_id, share_prompt=config.share_prompt,
                   pad_multiple=config.pad_multiple)


class _MetricMeans:
    """Means over examples of the loss and every per-example metric, skipping NaN (a metric
    undefined for an example, e.g. accuracy of an all-tied list)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, out: LossOutput) -> None:
        per_example = {key: v for key, v in out.metrics.items() if v.dim() == 1} | {"loss": out.loss.detach()}
        for key, value in per_example.items():
            defined = value[~torch.isnan(value)].float()
            self.sums[key] = self.sums.get(key, 0.0) + float(defined.sum())
            self.counts[key] = self.counts.get(key, 0) + defined.numel()

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums if self.counts[key]}


HEADLINE_METRICS = ("loss", "reward_accuracy", "ranking_accuracy", "reward_margin", "kendall_tau", "logps/chosen")


def headline(metrics: dict, key: str) -> float | None:
    """A metric by its plain name; in a loss mixture, the first loss's (`dpo/reward_accuracy`)."""
    if key in metrics:
        return metrics[key]
    return next((value for name, value in metrics.items() if name.endswith("/" + key)), None)


def _brief(metrics: dict) -> str:
    values = {key: headline(metrics, key) for key in HEADLINE_METRICS}
    return "  ".join(f"{key} {value:.4g}" for key, value in values.items() if value is not None)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _MetricsLog:
    """metrics.jsonl; on resume, lines after the checkpoint's step are dropped so the file reads as
    if the run had never stopped."""

    def __init__(self, path: Path, keep_until: int, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if keep_until >= 0 and path.exists():
            lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= keep_until]
            path.write_text("".join(line + "\n" for line in lines))
        elif keep_until < 0:
            path.unlink(missing_ok=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def _save_final(model, tokenizer, out_dir: Path, *, merge: bool) -> None:
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out_dir / "merged")
        tokenizer.save_pretrained(out_dir / "merged")
