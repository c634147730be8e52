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
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from prefopt.data import Batching, PlannedStep
from prefopt.engine.frozen import keep_frozen_in, restore_frozen
from prefopt.engine.hostmem import keep_freed_memory
from prefopt.engine.logps import CompletionLogpsModel, collate
from prefopt.engine.lora import adapters_off
from prefopt.engine.model import LoraSettings, load_model, load_tokenizer, resolve_model_path
from prefopt.engine.precision import choose_precision
from prefopt.engine.settings import EngineSettings
from prefopt.errors import TrainingError
from prefopt.losses import ListBatch, Objective
from prefopt.settings import save_config
from prefopt.train.cards import CardFacts, write_card
from prefopt.train.checkpoint import checkpoint_run, latest_checkpoint, load_checkpoint
from prefopt.train.config import RunSettings
from prefopt.train.inputs import Reuse, load_data, reused_data
from prefopt.train.metrics import MetricMeans, MetricsLog, brief
from prefopt.train.optimizers import build_optimizer, build_scheduler, schedule_free
from prefopt.train.reference import FixedLogps, fixed_logps
from prefopt.train.report import train_report
from prefopt.train.sharding import is_sharded, shard_on_cpu, unsharded
from prefopt.train.task import POLICY, Task
from prefopt.train.trackers import Trackers


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


def train(
    config: RunSettings,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_step: Callable[[TrainState, dict], None] | None = None,
    objective: Objective | None = None,
    engine: EngineSettings | None = None,
    task: Task = POLICY,
    on_eval: Callable[[int, dict], None] | None = None,
    reuse: Reuse | None = None,
) -> TrainResult:
    """Train as `config` says. `objective` replaces the configured loss mix (any callable from a
    ListBatch to a LossOutput with the Objective's interface); `engine` the engine's switches;
    `task` what is trained (a policy by default; `prefopt reward train` passes a reward model's);
    `on_eval(step, metrics)` is called after each evaluation (a tuning study prunes on it); `reuse`
    keeps the tokenizer, tokenized data and loaded model for the process's next runs."""
    # on a CPU, a step's activations page-faulted in afresh each step cost a large share of it
    with keep_freed_memory(enabled=not torch.cuda.is_available()):
        run = _Run.start(
            config,
            console or Console(),
            objective or config.build_objective(),
            engine or config.engine_settings(),
            task,
            reuse,
            on_eval,
        )
        try:
            return run.fit(resume, on_step)
        finally:  # the trackers' runs end (and their files are flushed) whatever happened
            run.trackers.close()


@dataclasses.dataclass
class Trainee:
    """The model being trained and what steps it: the engine module (prepared by accelerate), its
    trained parameters, optimizer and schedule."""

    engine: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    precision: str
    lora: bool


@dataclasses.dataclass
class RunData:
    """The tokenized train and eval lists and the optimizer steps planned over them."""

    tokenizer: object
    train: list
    eval: list
    plan: list[PlannedStep]


@dataclasses.dataclass
class _Run:
    """A run: its settings, the trainee, the data, where it is (`state`) and the fixed log-probs it
    reads; built once by `start`; `fit` is the loop."""

    config: RunSettings
    task: Task
    console: Console
    accelerator: object
    objective: Objective
    trainee: Trainee
    data: RunData
    reuse: Reuse | None
    on_eval: Callable[[int, dict], None] | None
    started: float
    state: TrainState = dataclasses.field(default_factory=TrainState)
    reference: FixedLogps | None = None
    anchor: FixedLogps | None = None  # log-probs under anchor_model, when the objective reads them
    eval_seconds: float = 0.0
    trackers: Trackers = dataclasses.field(default_factory=Trackers)

    def say(self, *args, **kwargs) -> None:
        if self.accelerator.is_main_process:
            self.console.print(*args, **kwargs)

    @property
    def out_dir(self) -> Path:
        return Path(self.config.output_dir)

    @functools.cached_property
    def batching(self) -> Batching:
        return self.config.batching()

    def fit(self, resume: bool, on_step: Callable[[TrainState, dict], None] | None) -> TrainResult:
        config, total = self.config, len(self.data.plan)
        metrics_log = self.restore(resume)
        reference_started = time.perf_counter()
        if self.objective.needs_reference:
            self.reference = self.reference_logps()
        if "anchor" in self.objective.needs:
            self.anchor = self.anchor_logps()
        reference_seconds = time.perf_counter() - reference_started
        eval_start = self.evaluate() if self.state.step == 0 else {}
        if eval_start:
            metrics_log.write({"step": 0, "split": "eval", **eval_start})
            self.say("eval at start: " + brief(eval_start))
        tokens_seen, train_seconds = 0, 0.0
        if schedule_free(self.trainee.optimizer):
            self.trainee.optimizer.train()
        with self.progress("train") as progress:
            task = progress.add_task("train", total=total, completed=self.state.step, status="")
            for planned in self.data.plan[self.state.step :]:
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
        self.save_final(eval_end)
        self.trackers.log_report(lambda: train_report(self.out_dir), self.state.step)
        return TrainResult(
            output_dir=self.out_dir,
            steps=self.state.step,
            eval_start=eval_start,
            eval_end=eval_end,
            seconds=time.perf_counter() - self.started,
            tokens_per_second=tokens_seen / train_seconds if train_seconds else 0.0,
            reference_seconds=reference_seconds,
            loop_seconds=train_seconds,
            eval_seconds=self.eval_seconds,
        )

    @classmethod
    def start(
        cls,
        config: RunSettings,
        console: Console,
        objective: Objective,
        engine_settings: EngineSettings,
        task: Task,
        reuse: Reuse | None,
        on_eval: Callable[[int, dict], None] | None,
    ) -> _Run:
        started = time.perf_counter()
        accelerator, precision, why = accelerator_for(config)
        say = console.print if accelerator.is_main_process else (lambda *a, **k: None)
        seed_everything(config.seed)
        tokenizer = reuse.tokenizer(config.model) if reuse else load_tokenizer(config.model)
        if reuse:
            train_data, eval_data = reused_data(config, tokenizer, say, reuse, objective)
        else:
            train_data, eval_data = load_data(config, tokenizer, say, objective)
        engine, lora = _engine(config, task, objective, engine_settings, tokenizer, reuse)
        frozen = 0
        sharded = is_sharded(accelerator)  # FSDP gathers weights of one dtype together
        if precision == "bf16" and lora and engine_settings.frozen_in_bf16 and not sharded:
            # the same numbers, less memory
            frozen = keep_frozen_in(engine.model, torch.bfloat16, resolve_model_path(config.model))
        named = [(name, p) for name, p in engine.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        total, trained = (sum(p.numel() for p in group) for group in (engine.parameters(), params))
        say(
            f"model: {config.model} ({total / 1e6:.1f} M parameters, {trained / 1e6:.2f} M trained"
            f"{', LoRA' if lora else ''}), precision {precision} ({why}); "
            f"{engine.model.prefopt_engine.describe()}"
            + (f"; {frozen} frozen weights held in bf16" if frozen else "")
        )
        processes = accelerator.num_processes
        steps = _total_steps(config, train_data, processes)
        plan = config.batching().step_plan(train_data, steps, processes)
        optimizer = build_optimizer(config.optimizer, named, lr=config.learning_rate,
                                    weight_decay=config.weight_decay, device=accelerator.device,
                                    warmup_steps=round(config.warmup_ratio * len(plan)))  # fmt: skip
        engine, optimizer = accelerator.prepare(engine, optimizer)
        params = [p for p in engine.parameters() if p.requires_grad]  # FSDP's are new (sharded)
        scheduler = build_scheduler(config.scheduler, optimizer, steps=len(plan),
                                    warmup_ratio=config.warmup_ratio,
                                    decay_ratio=config.decay_ratio)  # fmt: skip
        trainee = Trainee(engine, params, optimizer, scheduler, precision, lora=lora is not None)
        data = RunData(tokenizer, train_data, eval_data, plan)
        return cls(
            config, task, console, accelerator, objective, trainee, data, reuse, on_eval, started
        )

    def restore(self, resume: bool) -> MetricsLog:
        """Load the last checkpoint (with `resume`), or clear what an earlier run left here."""
        checkpoint = latest_checkpoint(self.out_dir) if resume else None
        if resume and checkpoint is None:
            self.say(f"[yellow]no checkpoint in {self.out_dir}; starting from the beginning[/]")
        trainee = self.trainee
        if checkpoint is not None:
            saved = load_checkpoint(
                checkpoint,
                self.accelerator.unwrap_model(trainee.engine),
                trainee.optimizer,
                trainee.scheduler,
            )
            self.state = TrainState(
                step=saved["state"]["step"], epoch=saved["state"].get("epoch", 0)
            )
            self.objective.load_state_dict(saved["objective"])
            self.say(f"resumed from {checkpoint} at step {self.state.step}")
        else:  # a fresh start: nothing of an earlier run in this folder may leak into this one
            shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)
            (self.out_dir / "reference_logps.pt").unlink(missing_ok=True)
            (self.out_dir / "anchor_logps.pt").unlink(missing_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out_dir / "config.yaml")
        config = self.config
        self.trackers = Trackers.open(config.report_to, self.out_dir, config.model_dump(),
                                      config.report_group, config.run_name)  # fmt: skip
        return MetricsLog(
            self.out_dir / "metrics.jsonl",
            keep_until=self.state.step if checkpoint else -1,
            enabled=self.accelerator.is_main_process,
            sink=self.trackers.log,
        )

    def reference_logps(self) -> FixedLogps:
        """The reference: the policy's base with LoRA adapters off, or the policy as it starts (its
        per-token values too, when the objective reads them)."""
        engine = self.trainee.engine
        base = self.accelerator.unwrap_model(engine).model
        return fixed_logps(
            self,
            "reference",
            engine,
            base,
            adapters_off=functools.partial(adapters_off, base) if self.trainee.lora else None,
            with_tokens="ref_tokens" in self.objective.needs,
        )

    def anchor_logps(self) -> FixedLogps:
        """A second, fixed reference: `anchor_model`, loaded for this pass alone."""
        settings = self.accelerator.unwrap_model(self.trainee.engine).settings
        model = load_model(
            self.config.anchor_model,
            engine=settings,
            cache=self.reuse.models if self.reuse is not None else None,
        ).to(self.accelerator.device)
        return fixed_logps(
            self,
            "anchor",
            CompletionLogpsModel(model, settings),
            model,
            adapters_off=None,
            with_tokens=False,
            detail=f" ({self.config.anchor_model})",
        )

    def losses(self, indices: list[int], split: str, across=None):
        """The objective on the lists `indices` of `split` ("train" or "eval"); `across` sums a
        batch-wide quantity over the processes that share the step (ListBatch.across)."""
        batching, train = self.batching, split == "train"
        examples = self.data.train if train else self.data.eval
        collated = collate(
            [examples[i] for i in indices],
            indices,
            self.data.tokenizer.pad_token_id,
            share_prompt=batching.share_prompt,
            pad_multiple=batching.pad_multiple,
        )
        collated = collated.to(self.accelerator.device)
        with self.accelerator.autocast():
            result = self.trainee.engine(collated)
        k = collated.mask.shape[1]
        reference, anchor = self.reference, self.anchor
        ref_tokens = None
        if reference is not None and reference.tokens is not None:
            ref_tokens = reference.tokens[split][
                collated.indices, :k, : result.token_logps.shape[-1]
            ]
        batch = ListBatch(
            logps=result.logps,
            ref_logps=None if reference is None else reference.of(split)[collated.indices, :k],
            anchor_logps=None if anchor is None else anchor.of(split)[collated.indices, :k],
            lengths=result.lengths,
            scores=collated.scores,
            mask=collated.mask,
            token_logps=result.token_logps,
            token_mask=result.token_mask,
            ref_token_logps=ref_tokens,
            sampling_log_weights=result.sampling_log_weights,
            prompt_logps=result.prompt_logps,
            prompt_lengths=None if result.prompt_logps is None else collated.prompt_lengths,
            across=across,
        )
        if "mismatched" in self.objective.needs:
            batch = _mismatched_apart(batch)
        return self.objective(batch, train=train), collated

    def step(self, planned: PlannedStep) -> tuple[dict, int, float]:
        """One optimizer step over the planned lists (split into micro-batches and processes);
        returns its metrics record, real tokens and seconds."""
        started, trainee = time.perf_counter(), self.trainee
        processes, lists = self.accelerator.num_processes, planned.lists
        micro = self.batching.micro_batches(lists, processes)[
            self.accelerator.process_index :: processes
        ]
        metrics = MetricMeans()
        real_tokens = padded_tokens = 0
        # every process holds `accumulation` micro-batches of a full step, and so can sum a
        # quantity across the processes at each (a bucket's short last step holds fewer)
        lockstep = processes > 1 and len(lists) >= self.batching.accumulation * processes
        across = _sum_across_processes if lockstep else None
        for i, indices in enumerate(micro):
            sync = i == len(micro) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(trainee.engine):
                out, collated = self.losses(indices, "train", across)
                loss = out.loss.mean()
                if not torch.isfinite(loss):
                    path = self.checkpoint()
                    raise TrainingError(
                        f"step {self.state.step + 1}: the loss is {loss.item()} (non-finite); "
                        f"stopped. The last good state is saved in {path}; lower the "
                        "learning rate or check the data, then resume."
                    )
                # every list of the step weighs the same, however the step is split into
                # micro-batches and processes (DDP averages over processes)
                self.accelerator.backward(out.loss.sum() * processes / len(lists))
            real_tokens += collated.real_tokens
            padded_tokens += collated.padded_tokens
            metrics.add(out)
        grad_norm = self.accelerator.clip_grad_norm_(
            trainee.params, self.config.max_grad_norm or float("inf")
        )
        trainee.optimizer.step()
        trainee.scheduler.step()
        trainee.optimizer.zero_grad(set_to_none=True)
        self.state = TrainState(step=self.state.step + 1, epoch=planned.epoch)
        elapsed = time.perf_counter() - started
        record = {
            "step": self.state.step,
            "split": "train",
            "epoch": planned.epoch,
            "lr": trainee.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "tokens_per_s": real_tokens / elapsed,
            "lists_per_s": len(lists) / elapsed,
            "padding": padded_tokens / max(1, real_tokens + padded_tokens),
            **metrics.means(),
        }
        return record, real_tokens, elapsed

    @contextlib.contextmanager
    def averaged_weights(self):
        """A schedule-free optimizer's averaged weights, to evaluate and save, then its training
        point again (any other optimizer: the weights as they are)."""
        optimizer = self.trainee.optimizer
        if not schedule_free(optimizer):
            yield
            return
        optimizer.eval()
        try:
            yield
        finally:
            optimizer.train()

    def evaluate(self) -> dict[str, float]:
        if not self.data.eval:
            return {}
        started = time.perf_counter()
        with self.averaged_weights():
            metrics = self.evaluate_lists()
        self.eval_seconds += time.perf_counter() - started
        if self.on_eval is not None:
            self.on_eval(self.state.step, metrics)
        return metrics

    def evaluate_lists(self) -> dict[str, float]:
        engine = self.trainee.engine
        engine.eval()
        metrics, batches = MetricMeans(), []
        with torch.no_grad():
            for indices in self.batching.inference_batches(self.data.eval):
                out, collated = self.losses(indices, "eval")
                metrics.add(out)
                if self.task.summarizes:
                    batches.append((out, collated))
        engine.train()
        return metrics.means() | self.task.summarize(batches)

    def checkpoint(self) -> Path:
        trainee = self.trainee
        return checkpoint_run(self.accelerator, self.out_dir,
                              self.accelerator.unwrap_model(trainee.engine), trainee.optimizer,
                              trainee.scheduler, dataclasses.asdict(self.state),
                              self.objective.state_dict())  # fmt: skip

    def save_final(self, evaluation: dict) -> None:
        engine = self.accelerator.unwrap_model(self.trainee.engine)
        with self.averaged_weights():  # a schedule-free optimizer's averaged weights are the model
            if is_sharded(self.accelerator):  # a plain copy with the gathered weights
                engine = unsharded(engine, lambda: self.build_engine(engine.settings))
            if self.accelerator.is_main_process:
                self.save_model(engine.model, evaluation)
        self.accelerator.wait_for_everyone()

    def build_engine(self, settings: EngineSettings) -> torch.nn.Module:
        config, reuse = self.config, None
        return _engine(config, self.task, self.objective, settings, self.data.tokenizer, reuse)[0]

    def save_model(self, model, evaluation: dict) -> None:
        restore_frozen(model)  # the saved model keeps its base weights' float32 values
        cache = self.reuse.models if self.reuse is not None and self.reuse.keep_trained else None
        self.say(self.task.save(model, tokenizer=self.data.tokenizer, out=self.out_dir,
                                config=self.config, lora=self.trainee.lora, cache=cache))  # fmt: skip
        facts = self.card_facts(evaluation)
        for name in ("model", "merged", "adapters"):
            if (self.out_dir / name).is_dir():
                write_card(self.out_dir / name, facts)

    def card_facts(self, evaluation: dict) -> CardFacts:
        config = self.config
        return CardFacts(
            base_model=config.model, command=self.task.command, objective=self.objective.terms(),
            data=config.data, reward_model=self.task.command == "prefopt reward train",
            counts={"train lists": len(self.data.train), "eval lists": len(self.data.eval),
                    "steps": self.state.step},
            settings={key: getattr(config, key) for key in CARD_SETTINGS if hasattr(config, key)},
            evaluation=evaluation,
        )  # fmt: skip

    def progress(self, label: str, transient: bool = False) -> Progress:
        columns = [
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        if not transient:
            columns.append(TextColumn("{task.fields[status]}"))
        return Progress(
            *columns,
            console=self.console,
            transient=transient,
            disable=not self.accelerator.is_main_process,
        )


def accelerator_for(config) -> tuple[Accelerator, str, str]:
    """The accelerator of a run with `config.precision`, that precision and why it."""
    on_gpu = torch.cuda.is_available()
    precision, why = choose_precision(config.precision, torch.device("cuda" if on_gpu else "cpu"))
    # accelerate keeps one mixed-precision setting per process and refuses another one: an
    # earlier run's (of another precision) is dropped here, the distributed environment kept
    AcceleratorState._reset_state()
    # without cpu=True, accelerate ignores torchrun's multi-process environment on a CPU-only machine
    mixed = "bf16" if precision == "bf16" else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not on_gpu)
    shard_on_cpu(accelerator)
    return accelerator, precision, why


# the settings a model card lists
CARD_SETTINGS = ("learning_rate", "lora", "lora_r", "lora_alpha", "epochs", "max_steps",
                 "batch_size", "gradient_accumulation_steps", "scheduler", "precision", "seed",
                 "desirable_rating")  # fmt: skip


def _sum_across_processes(value: torch.Tensor) -> torch.Tensor:
    value = value.clone()
    torch.distributed.all_reduce(value)
    return value


def _mismatched_apart(batch: ListBatch) -> ListBatch:
    """Lists of [answer, mismatched answer] (data/feedback.py) as single answers with the
    mismatched answers' log-probs beside them."""
    answer = lambda values: None if values is None else values[:, :1]
    return ListBatch(
        logps=answer(batch.logps), ref_logps=answer(batch.ref_logps),
        lengths=answer(batch.lengths), scores=answer(batch.scores), mask=answer(batch.mask),
        mismatched_logps=batch.logps[:, 1], mismatched_ref_logps=batch.ref_logps[:, 1],
        across=batch.across,
    )  # fmt: skip


def _engine(
    config: RunSettings,
    task: Task,
    objective: Objective,
    settings: EngineSettings,
    tokenizer,
    reuse: Reuse | None,
) -> tuple[torch.nn.Module, LoraSettings | None]:
    """The task's engine module around the model, and the LoRA settings it was built with."""
    lora = None
    if config.lora:
        targets = tuple(config.lora_target_modules)
        lora = LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout, targets)
    cache = reuse.models if reuse else None
    engine = task.build(
        config, lora=lora, engine=settings, objective=objective, tokenizer=tokenizer, cache=cache
    )
    return engine, lora


def _total_steps(config: RunSettings, train_data, processes: int) -> int:
    return (
        config.max_steps
        or len(config.batching().epoch_steps(train_data, 0, processes)) * config.epochs
    )


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators, from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
