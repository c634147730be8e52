"""The training loop: data -> tokens -> reference log-probs (once, in inference mode) -> the
optimizer steps of a plan computed up front -> metrics, evaluation, checkpoints that resume to
the same final weights, and a final model that transformers loads alone."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prefopt.data import Batching, PlannedStep, TokenizeSettings, load_records, split_by_prompt, tokenize_records
from prefopt.engine.frozen import keep_frozen_in, restore_frozen
from prefopt.engine.hostmem import keep_freed_memory
from prefopt.engine.logps import CompletionLogpsModel, collate
from prefopt.engine.model import LoraSettings, keep_saved, load_model
from prefopt.engine.settings import ENGINE_VERSION, EngineSettings
from prefopt.errors import TrainingError
from prefopt.losses import ListBatch, Objective
from prefopt.settings import save_config
from prefopt.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.train.config import RunSettings
from prefopt.train.metrics import MetricMeans, MetricsLog, brief
from prefopt.train.reference import reference_logps


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch of the last step done


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
    eval_seconds: float = 0.0  # the evaluations (at the start, every eval_every steps, at the end)


@dataclasses.dataclass
class Reuse:
    """What one process keeps between runs that share a model and data (the trials of a tuning
    study): tokenizers by model, tokenized data by every setting that changes it, and each model as
    read from disk, copied for every run (so each gets fresh LoRA adapters, or for full fine-tuning
    the original weights). A run with it trains exactly as one without; it costs one more copy of
    the model's weights in memory. `hits` counts what was reused."""

    tokenizers: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    models: dict = dataclasses.field(default_factory=dict)
    keep_trained: bool = False  # also keep each run's saved model, as read from its folder (the loop reads it next)
    hits: dict[str, int] = dataclasses.field(default_factory=lambda: {"tokenizer": 0, "data": 0})

    def tokenizer(self, spec: str):
        from prefopt.engine.model import load_tokenizer

        if spec in self.tokenizers:
            self.hits["tokenizer"] += 1
        else:
            self.tokenizers[spec] = load_tokenizer(spec)
        return self.tokenizers[spec]


_DATA_SETTINGS = ("model", "data", "eval_data", "eval_fraction", "seed", "skip_invalid", "columns",
                  "max_prompt_tokens", "max_completion_tokens", "prompt_truncation", "chat_template")


@dataclasses.dataclass(frozen=True)
class Task:
    """What a run trains, the rest of the run being the same: `build` loads the model (from the
    `loaded` models of a Reuse, when given) and wraps it in the engine module whose forward gives
    per-completion values [B, K] (log-probs of a policy, or rewards of a reward model); `save`
    writes the final model and says where (and keeps it in the `loaded` models, when given);
    `summarize`, if set, adds metrics computed over the whole evaluation set from each batch's
    (loss output, collated batch)."""

    build: Callable[[RunSettings, LoraSettings | None, EngineSettings, Objective, object, dict | None],
                    torch.nn.Module]
    save: Callable[[torch.nn.Module, object, Path, RunSettings, bool, dict | None], str]
    summarize: Callable[[list[tuple]], dict[str, float]] | None = None


def _build_policy(config: RunSettings, lora: LoraSettings | None, engine: EngineSettings, objective: Objective,
                  tokenizer, loaded: dict | None) -> torch.nn.Module:
    model = load_model(config.model, lora=lora, gradient_checkpointing=config.gradient_checkpointing, engine=engine,
                       loaded=loaded)
    needs = objective.needs
    return CompletionLogpsModel(model, engine, with_tokens="tokens" in needs,
                                with_sampling_weights="sampling_weights" in needs, with_prompt="prompt" in needs)


def _save_policy(model, tokenizer, out: Path, config: RunSettings, lora: bool, loaded: dict | None) -> str:
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    if not lora:
        keep_saved(loaded, out / "model", model, config.model)
    if not (config.merge and lora):
        return f"saved the model to {out / 'model'}"
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    keep_saved(loaded, out / "merged", merged, config.model)
    return f"saved the model to {out / 'model'} and {out / 'merged'}"


POLICY = Task(build=_build_policy, save=_save_policy)


def train(config: RunSettings, *, resume: bool = False, console: Console | None = None,
          on_step: Callable[[TrainState, dict], None] | None = None, objective: Objective | None = None,
          engine: EngineSettings | None = None, task: Task = POLICY,
          on_eval: Callable[[int, dict], None] | None = None, reuse: Reuse | None = None) -> TrainResult:
    """Train as `config` says. `objective` replaces the configured loss mix (any callable from a
    ListBatch to a LossOutput with the Objective's interface); `engine` the engine's switches;
    `task` what is trained (a policy by default; `prefopt reward train` passes a reward model's);
    `on_eval(step, metrics)` is called after each evaluation (a tuning study prunes on it); `reuse`
    keeps the tokenizer, tokenized data and loaded model for the process's next runs."""
    # on a CPU, a step's activations page-faulted in afresh each step cost ~20% of it
    with keep_freed_memory(enabled=not torch.cuda.is_available()):
        run = _Run.start(config, console or Console(), objective or config.build_objective(),
                         engine or config.engine_settings(), task, reuse)
        run.on_eval, run.reuse = on_eval, reuse
        return run.fit(resume, on_step)


@dataclasses.dataclass
class _Run:
    """Everything a run holds, built once by `start`; `fit` is the loop."""

    config: RunSettings
    task: Task
    console: Console
    say: Callable
    accelerator: object
    engine: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    tokenizer: object
    train_data: list
    eval_data: list
    plan: list[PlannedStep]
    precision: str
    lora: bool
    started: float
    state: TrainState = dataclasses.field(default_factory=TrainState)
    ref_train: torch.Tensor | None = None
    ref_eval: torch.Tensor | None = None
    ref_tokens: dict[str, torch.Tensor] | None = None  # "train"/"eval": per-token reference log-probs, when asked
    anchor: dict[str, torch.Tensor] | None = None  # "train"/"eval": log-probs under anchor_model, when asked
    on_eval: Callable[[int, dict], None] | None = None
    reuse: Reuse | None = None
    eval_seconds: float = 0.0

    @property
    def out_dir(self) -> Path:
        return Path(self.config.output_dir)

    @functools.cached_property
    def batching(self) -> Batching:
        return self.config.batching()

    def fit(self, resume: bool, on_step: Callable[[TrainState, dict], None] | None) -> TrainResult:
        config, total = self.config, len(self.plan)
        metrics_log = self.restore(resume)
        reference_started = time.perf_counter()
        if self.objective.needs_reference:
            self.ref_train, self.ref_eval = self.reference()
        if "anchor" in self.objective.needs:
            self.anchor = self.anchor_logps()
        reference_seconds = time.perf_counter() - reference_started
        eval_start = self.evaluate() if self.state.step == 0 else {}
        if eval_start:
            metrics_log.write({"step": 0, "split": "eval", **eval_start})
            self.say("eval at start: " + brief(eval_start))
        tokens_seen, train_seconds = 0, 0.0
        with self.progress("train") as progress:
            task = progress.add_task("train", total=total, completed=self.state.step, status="")
            for planned in self.plan[self.state.step:]:
                record, step_tokens, elapsed = self.step(planned)
                tokens_seen, train_seconds = tokens_seen + step_tokens, train_seconds + elapsed
                step = self.state.step
                if step % config.log_every == 0 or step == total:
                    metrics_log.write(record)
                progress.update(task, completed=step, status=brief(record))
                if config.eval_every and step % config.eval_every == 0 and step < total:
                    metrics_log.write({"step": step, "split": "eval", **self.evaluate()})
                if config.save_every and step % config.save_every == 0 and step < total:
                    self.checkpoint()
                if on_step is not None:
                    on_step(self.state, record)
        eval_end = self.evaluate()
        if eval_end:
            metrics_log.write({"step": self.state.step, "split": "eval", **eval_end})
            self.say("eval at end:   " + brief(eval_end))
        self.checkpoint()
        self.save_final()
        return TrainResult(output_dir=self.out_dir, steps=self.state.step, eval_start=eval_start, eval_end=eval_end,
                           seconds=time.perf_counter() - self.started,
                           tokens_per_second=tokens_seen / train_seconds if train_seconds else 0.0,
                           reference_seconds=reference_seconds, loop_seconds=train_seconds,
                           eval_seconds=self.eval_seconds)

    @classmethod
    def start(cls, config: RunSettings, console: Console, objective: Objective, engine_settings: EngineSettings,
              task: Task, reuse: Reuse | None) -> _Run:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from transformers import get_scheduler

        from prefopt.engine.model import load_tokenizer, resolve_model_path
        from prefopt.engine.precision import choose_precision

        started = time.perf_counter()
        on_gpu = torch.cuda.is_available()
        precision, why = choose_precision(config.precision, torch.device("cuda" if on_gpu else "cpu"))
        # accelerate keeps one mixed-precision setting per process and refuses another one: an earlier
        # run's (of another precision) is dropped here, the distributed environment kept
        AcceleratorState._reset_state()
        # without cpu=True, accelerate ignores torchrun's multi-process environment on a CPU-only machine
        accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not on_gpu)
        say = console.print if accelerator.is_main_process else (lambda *a, **k: None)
        _seed_everything(config.seed)

        tokenizer = reuse.tokenizer(config.model) if reuse else load_tokenizer(config.model)
        train_data, eval_data = _reused_data(config, tokenizer, say, reuse) if reuse else _load_data(config, tokenizer,
                                                                                                    say)
        lora = LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout,
                            tuple(config.lora_target_modules)) if config.lora else None
        engine = task.build(config, lora, engine_settings, objective, tokenizer, reuse.models if reuse else None)
        model = engine.model
        frozen = 0
        if precision == "bf16" and lora and engine_settings.frozen_in_bf16:  # the same numbers, less memory
            frozen = keep_frozen_in(model, torch.bfloat16, resolve_model_path(config.model))
        params = [p for p in engine.parameters() if p.requires_grad]
        total = sum(p.numel() for p in engine.parameters())
        say(f"model: {config.model} ({total / 1e6:.1f} M parameters, {sum(p.numel() for p in params) / 1e6:.2f} M "
            f"trained{', LoRA' if lora else ''}), precision {precision} ({why}); {model.prefopt_engine.describe()}"
            + (f"; {frozen} frozen weights held in bf16" if frozen else ""))
        # PyTorch's fused AdamW updates every tensor in one kernel; on a CPU the default runs a Python
        # loop over the tensors (docs/benchmarks.md: several times slower for full fine-tuning)
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                      fused=accelerator.device.type in ("cpu", "cuda"))
        engine, optimizer = accelerator.prepare(engine, optimizer)
        plan = config.batching().step_plan(train_data, _total_steps(config, train_data, accelerator.num_processes),
                                           accelerator.num_processes)
        scheduler = get_scheduler("constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
                                  optimizer, num_warmup_steps=round(config.warmup_ratio * len(plan)),
                                  num_training_steps=len(plan))
        return cls(config=config, task=task, console=console, say=say, accelerator=accelerator, engine=engine,
                   objective=objective, optimizer=optimizer, scheduler=scheduler, params=params, tokenizer=tokenizer,
                   train_data=train_data, eval_data=eval_data, plan=plan, precision=precision, lora=lora is not None,
                   started=started)

    def restore(self, resume: bool) -> MetricsLog:
        """Load the last checkpoint (with `resume`), or clear what an earlier run left here."""
        checkpoint = latest_checkpoint(self.out_dir) if resume else None
        if resume and checkpoint is None:
            self.say(f"[yellow]no checkpoint in {self.out_dir}; starting from the beginning[/]")
        if checkpoint is not None:
            saved = load_checkpoint(checkpoint, self.accelerator.unwrap_model(self.engine), self.optimizer,
                                    self.scheduler)
            self.state = TrainState(step=saved["state"]["step"], epoch=saved["state"].get("epoch", 0))
            self.objective.load_state_dict(saved["objective"])
            self.say(f"resumed from {checkpoint} at step {self.state.step}")
        else:  # a fresh start: nothing of an earlier run in this folder may leak into this one
            shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)
            (self.out_dir / "reference_logps.pt").unlink(missing_ok=True)
            (self.out_dir / "anchor_logps.pt").unlink(missing_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out_dir / "config.yaml")
        return MetricsLog(self.out_dir / "metrics.jsonl", keep_until=self.state.step if checkpoint else -1,
                          enabled=self.accelerator.is_main_process)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of the train and eval lists (and their per-token values into
        `ref_tokens`, when the objective needs them): from the run folder on resume (by then a fully
        fine-tuned policy is no longer the reference), else the reference pass with the shared cache
        (for every later run with the same settings)."""

        device, run_copy = self.accelerator.device, self.out_dir / "reference_logps.pt"
        with_tokens = "ref_tokens" in self.objective.needs
        if run_copy.exists():
            saved = torch.load(run_copy)
            if (saved["train"].shape[0] == len(self.train_data) and saved["eval"].shape[0] == len(self.eval_data)
                    and (not with_tokens or "tokens" in saved)):
                if with_tokens:
                    self.ref_tokens = {split: table.to(device) for split, table in saved["tokens"].items()}
                return saved["train"].to(device), saved["eval"].to(device)
        base = self.accelerator.unwrap_model(self.engine).model
        cache = self.reference_cache(base)
        with self.progress("reference log-probs", transient=True) as progress:
            (ref_train, ref_eval), tokens, hits = reference_logps(
                self.engine, [self.train_data, self.eval_data], batching=self.batching,
                pad_id=self.tokenizer.pad_token_id, device=device, cache=cache,
                adapters_off=base.disable_adapter if self.lora else None, autocast=self.accelerator.autocast,
                progress=progress, with_tokens=with_tokens)
        saved = {"train": ref_train.cpu(), "eval": ref_eval.cpu()}
        if tokens is not None:
            self.ref_tokens = dict(zip(("train", "eval"), tokens, strict=True))
            saved["tokens"] = {split: table.cpu() for split, table in self.ref_tokens.items()}
        if self.accelerator.is_main_process:
            torch.save(saved, run_copy)
            if cache is not None:
                cache.save()
        total = len(self.train_data) + len(self.eval_data)
        self.say(f"reference log-probs: {hits} of {total} lists from the cache, {total - hits} computed")
        return ref_train, ref_eval

    def reference_cache(self, model):
        """The shared on-disk cache of log-probs under `model`'s weights and this run's settings
        (None when the run keeps none)."""
        from prefopt.engine.attention import attention_kernel
        from prefopt.engine.model import cache_dir
        from prefopt.engine.refcache import ReferenceCache, weights_fingerprint

        if not self.config.reference_cache:
            return None
        settings = self.accelerator.unwrap_model(self.engine).settings
        key = {"weights": weights_fingerprint(model), "precision": self.precision,
               "share_prompt": self.config.share_prompt, "pad_multiple": self.config.pad_multiple,
               "engine": ENGINE_VERSION,
               "attention": attention_kernel(settings, self.precision, self.accelerator.device)}
        if settings.compile:  # compiled kernels round differently (the key of eager runs is as it was)
            key["compiled"] = True
        return ReferenceCache(cache_dir() / "reference", key)

    def anchor_logps(self) -> dict[str, torch.Tensor]:
        """Log-probs of the train and eval lists under `anchor_model` (a second, fixed reference):
        from the run folder on resume, else a pass of that model, loaded for it alone, with the
        shared cache."""

        device, run_copy = self.accelerator.device, self.out_dir / "anchor_logps.pt"
        if run_copy.exists():
            saved = torch.load(run_copy)
            if saved["train"].shape[0] == len(self.train_data) and saved["eval"].shape[0] == len(self.eval_data):
                return {split: table.to(device) for split, table in saved.items()}
        loaded = self.reuse.models if self.reuse is not None else None
        model = load_model(self.config.anchor_model, engine=self.accelerator.unwrap_model(self.engine).settings,
                           loaded=loaded).to(device)
        engine = CompletionLogpsModel(model, self.accelerator.unwrap_model(self.engine).settings)
        cache = self.reference_cache(model)
        with self.progress("anchor log-probs", transient=True) as progress:
            tables, _, hits = reference_logps(engine, [self.train_data, self.eval_data], batching=self.batching,
                                              pad_id=self.tokenizer.pad_token_id, device=device, cache=cache,
                                              adapters_off=None, autocast=self.accelerator.autocast, progress=progress)
        anchor = dict(zip(("train", "eval"), tables, strict=True))
        if self.accelerator.is_main_process:
            torch.save({split: table.cpu() for split, table in anchor.items()}, run_copy)
            if cache is not None:
                cache.save()
        total = len(self.train_data) + len(self.eval_data)
        self.say(f"anchor log-probs ({self.config.anchor_model}): {hits} of {total} lists from the cache")
        return anchor

    def losses(self, indices: list[int], examples, ref: torch.Tensor | None, train: bool):
        batching = self.batching
        collated = collate([examples[i] for i in indices], indices, self.tokenizer.pad_token_id,
                           share_prompt=batching.share_prompt, pad_multiple=batching.pad_multiple)
        collated = collated.to(self.accelerator.device)
        with self.accelerator.autocast():
            result = self.engine(collated)
        k = collated.mask.shape[1]
        ref_tokens = None
        if self.ref_tokens is not None:
            table = self.ref_tokens["train" if train else "eval"]  # train: the train lists, else the eval lists
            ref_tokens = table[collated.indices, :k, : result.token_logps.shape[-1]]
        anchor = None if self.anchor is None else self.anchor["train" if train else "eval"][collated.indices, :k]
        batch = ListBatch(logps=result.logps, ref_logps=None if ref is None else ref[collated.indices, :k],
                          anchor_logps=anchor,
                          lengths=result.lengths, scores=collated.scores, mask=collated.mask,
                          token_logps=result.token_logps, token_mask=result.token_mask, ref_token_logps=ref_tokens,
                          sampling_log_weights=result.sampling_log_weights, prompt_logps=result.prompt_logps,
                          prompt_lengths=None if result.prompt_logps is None else collated.prompt_lengths)
        return self.objective(batch, train=train), collated

    def step(self, planned: PlannedStep) -> tuple[dict, int, float]:
        """One optimizer step over the planned lists (split into micro-batches and processes);
        returns its metrics record, real tokens and seconds."""
        started = time.perf_counter()
        processes, lists = self.accelerator.num_processes, planned.lists
        micro = self.batching.micro_batches(lists, processes)[self.accelerator.process_index::processes]
        metrics = MetricMeans()
        real_tokens = padded_tokens = 0
        for i, indices in enumerate(micro):
            sync = i == len(micro) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.engine):
                out, collated = self.losses(indices, self.train_data, self.ref_train, train=True)
                loss = out.loss.mean()
                if not torch.isfinite(loss):
                    path = self.checkpoint()
                    raise TrainingError(f"step {self.state.step + 1}: the loss is {loss.item()} (non-finite); "
                                        f"stopped. The last good state is saved in {path}; lower the "
                                        "learning rate or check the data, then resume.")
                # every list of the step weighs the same, however the step is split into
                # micro-batches and processes (DDP averages over processes)
                self.accelerator.backward(out.loss.sum() * processes / len(lists))
            real_tokens += collated.real_tokens
            padded_tokens += collated.padded_tokens
            metrics.add(out)
        grad_norm = self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state = TrainState(step=self.state.step + 1, epoch=planned.epoch)
        elapsed = time.perf_counter() - started
        record = {"step": self.state.step, "split": "train", "epoch": planned.epoch,
                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  "tokens_per_s": real_tokens / elapsed, "lists_per_s": len(lists) / elapsed,
                  "padding": padded_tokens / max(1, real_tokens + padded_tokens), **metrics.means()}
        return record, real_tokens, elapsed

    def evaluate(self) -> dict[str, float]:
        if not self.eval_data:
            return {}
        started = time.perf_counter()
        metrics = self.evaluate_lists()
        self.eval_seconds += time.perf_counter() - started
        if self.on_eval is not None:
            self.on_eval(self.state.step, metrics)
        return metrics

    def evaluate_lists(self) -> dict[str, float]:
        self.engine.eval()
        metrics, batches = MetricMeans(), []
        with torch.no_grad():
            for indices in self.batching.inference_batches(self.eval_data):
                out, collated = self.losses(indices, self.eval_data, self.ref_eval, train=False)
                metrics.add(out)
                if self.task.summarize is not None:
                    batches.append((out, collated))
        self.engine.train()
        return metrics.means() | (self.task.summarize(batches) if self.task.summarize is not None else {})

    def checkpoint(self) -> Path:
        path = self.out_dir / "checkpoints" / f"step-{self.state.step}"
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.out_dir, self.accelerator.unwrap_model(self.engine), self.optimizer,
                                   self.scheduler, dataclasses.asdict(self.state), self.objective.state_dict())
        self.accelerator.wait_for_everyone()
        return path

    def save_final(self) -> None:
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.engine).model
            restore_frozen(model)  # the saved model keeps its base weights' float32 values
            loaded = self.reuse.models if self.reuse is not None and self.reuse.keep_trained else None
            self.say(self.task.save(model, self.tokenizer, self.out_dir, self.config, self.lora, loaded))

    def progress(self, label: str, transient: bool = False) -> Progress:
        columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        if not transient:
            columns.append(TextColumn("{task.fields[status]}"))
        return Progress(*columns, console=self.console, transient=transient,
                        disable=not self.accelerator.is_main_process)


def _total_steps(config: RunSettings, train_data, processes: int) -> int:
    return config.max_steps or len(config.batching().epoch_steps(train_data, 0, processes)) * config.epochs


def _load_data(config: RunSettings, tokenizer, say):
    loaded = load_records(config.data, skip_invalid=config.skip_invalid, columns=config.columns)
    say(loaded.summary())
    if config.eval_data:
        eval_loaded = load_records(config.eval_data, skip_invalid=config.skip_invalid, columns=config.columns)
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


def _reused_data(config: RunSettings, tokenizer, say, reuse: Reuse):
    key = repr([getattr(config, name) for name in _DATA_SETTINGS])
    if key in reuse.data:
        reuse.hits["data"] += 1
        train_data, eval_data = reuse.data[key]
        say(f"data: {len(train_data)} train lists, {len(eval_data)} eval lists, as tokenized for an earlier run")
    else:
        reuse.data[key] = _load_data(config, tokenizer, say)
    return reuse.data[key]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
