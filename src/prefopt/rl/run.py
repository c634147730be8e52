"""`prefopt rl`: online, group-relative RL. Each step draws prompts, samples K answers to each
with the live policy (LoRA adapters applied in memory: nothing is saved or merged per step)
through the shared-prefill sampler, scores every answer with the oracle, computes the
objective's advantages over the whole step, and trains on the packed engine, where each group's
prompt is encoded once for its K answers. Resumable: samples are seeded per (seed, step, prompt,
k) and the prompt order per epoch, so a run resumed from its checkpoint reaches the weights and
metrics of a run never stopped.

Old log-probs: with one pass over a step's samples (num_iterations 1) the sampling policy is the
policy being trained, and π_old is its own log-probs, detached (ρ = 1 in value). With more passes
π_old is one no-grad pass of the training engine before the first update. The sampler's own sums
of log-probs (the same model, another kernel) are only compared with the engine's, as the
`logp_gap` metric."""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import get_scheduler

from prefopt.data import TokenizedList, TokenizeSettings
from prefopt.data.tokenize import prompt_ids
from prefopt.engine.logps import CompletionLogpsModel, collate
from prefopt.engine.model import LoraSettings, load_model, load_tokenizer
from prefopt.engine.precision import decode_precision
from prefopt.engine.settings import EngineSettings
from prefopt.errors import TrainingError
from prefopt.evaluate.stats import bootstrap_mean
from prefopt.generate import SamplingSettings, load_prompts, sample
from prefopt.losses import ListBatch
from prefopt.losses.rl import advantages_for
from prefopt.oracles import ListToJudge, make_oracle
from prefopt.rl.config import RLConfig
from prefopt.settings import save_config
from prefopt.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.train.loop import accelerator_for, seed_everything
from prefopt.train.metrics import MetricsLog, brief


@dataclasses.dataclass
class RLResult:
    output_dir: Path
    steps: int
    seconds: float
    last: dict  # the last step's metrics


@dataclasses.dataclass
class Group:
    """A prompt's K sampled answers and their rewards."""

    prompt: int  # index into the prompts
    samples: list
    rewards: list[float]


@dataclasses.dataclass
class Policy:
    """The policy being trained and what steps it."""

    accelerator: object
    engine: torch.nn.Module  # the engine module (prepared by accelerate) around the model
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    tokenizer: object
    precision: str
    lora: bool

    @property
    def model(self):
        return self.accelerator.unwrap_model(self.engine).model


def rl(config: RLConfig, *, resume: bool = False, console: Console | None = None,
       on_step=None) -> RLResult:  # fmt: skip
    """Run `config.max_steps` steps (from the last checkpoint with `resume`). `on_step(step,
    record)` is called after each."""
    console, started, out = console or Console(), time.perf_counter(), Path(config.output_dir)
    policy = _policy(config, console)
    objective, oracle = config.build_objective(), make_oracle(config.oracle, config.oracle_options)
    records = load_prompts(config.prompts)
    settings = TokenizeSettings(max_prompt_tokens=config.max_prompt_tokens,
                                chat_template=config.chat_template)  # fmt: skip
    ids = [prompt_ids(record, policy.tokenizer, settings) for record in records]
    state = _restore(config, policy, out, resume, console)
    heldout = load_prompts(config.heldout) if config.heldout else []
    heldout_ids = [prompt_ids(record, policy.tokenizer, settings) for record in heldout]
    log = MetricsLog(out / "metrics.jsonl", keep_until=state["step"] if state["step"] else -1)
    record: dict = {}
    columns = [TextColumn("[bold]rl"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]  # fmt: skip
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(
                "rl", total=config.max_steps, completed=state["step"], status=""
            )
            while state["step"] < config.max_steps:
                record, state["cursor"] = _step(config, policy, objective, oracle, records, ids,
                                                state["step"], state["cursor"])  # fmt: skip
                state["step"] += 1
                if state["step"] % config.log_every == 0 or state["step"] == config.max_steps:
                    log.write(record)
                every = config.eval_every and state["step"] % config.eval_every == 0
                if heldout and (every or state["step"] == config.max_steps):
                    log.write(
                        _evaluate(config, policy, oracle, heldout, heldout_ids, state["step"])
                    )
                progress.update(task, completed=state["step"], status=brief(record))
                if config.save_every and state["step"] % config.save_every == 0:
                    _checkpoint(policy, out, state, objective)
                if on_step is not None:
                    on_step(state["step"], record)
    finally:
        oracle.close()
    _checkpoint(policy, out, state, objective)
    console.print(_save(policy, out, config), highlight=False)
    return RLResult(out, state["step"], time.perf_counter() - started, record)


def _policy(config: RLConfig, console: Console) -> Policy:
    accelerator, precision, why = accelerator_for(config)
    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    lora = None
    if config.lora:
        lora = LoraSettings(
            config.lora_r, config.lora_alpha, 0.0, tuple(config.lora_target_modules)
        )
    settings = EngineSettings()
    model = load_model(config.model, lora=lora, engine=settings,
                       gradient_checkpointing=config.gradient_checkpointing)  # fmt: skip
    engine = CompletionLogpsModel(model, settings, with_tokens=True)
    params = [p for p in engine.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=accelerator.device.type in ("cpu", "cuda"))  # fmt: skip
    engine, optimizer = accelerator.prepare(engine, optimizer)
    scheduler = get_scheduler("constant", optimizer)
    total = sum(p.numel() for p in engine.parameters())
    console.print(f"model: {config.model} ({total / 1e6:.1f} M parameters, "
                  f"{sum(p.numel() for p in params) / 1e6:.2f} M trained), precision {precision} "
                  f"({why}); objective {config.objective}, oracle {config.oracle}",
                  highlight=False)  # fmt: skip
    return Policy(
        accelerator, engine, optimizer, scheduler, params, tokenizer, precision, lora is not None
    )


def _restore(config: RLConfig, policy: Policy, out: Path, resume: bool, console) -> dict:
    """The run's position: from its last checkpoint with `resume`, else a fresh start (nothing
    of an earlier run in the folder is kept)."""
    checkpoint = latest_checkpoint(out) if resume else None
    state = {"step": 0, "cursor": 0}
    if checkpoint is not None:
        model = policy.accelerator.unwrap_model(policy.engine)
        saved = load_checkpoint(checkpoint, model, policy.optimizer, policy.scheduler)
        state = {"step": saved["state"]["step"], "cursor": saved["state"]["cursor"]}
        console.print(f"resumed from {checkpoint} at step {state['step']}", highlight=False)
    else:
        if resume:
            console.print(f"[yellow]no checkpoint in {out}; starting from the beginning[/]")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    return state


def _prompt_at(position: int, count: int, seed: int) -> int:
    """The prompt at `position` of the run's order: epochs over the pool, each shuffled by the seed."""
    epoch, offset = divmod(position, count)
    return random.Random(seed * 1_000_003 + epoch).sample(range(count), count)[offset]


def _step(config, policy: Policy, objective, oracle, records, ids, step: int, cursor: int):
    """One step: sample, score, train. Returns its metrics record and the prompt cursor after it."""
    times, groups, sampled, draws = {"sample": 0.0, "score": 0.0}, [], [], 0
    failed_before = _failures(oracle)
    while len(groups) < config.prompts_per_step and draws < config.max_draws:
        need = config.prompts_per_step - len(groups)
        chosen = [_prompt_at(cursor + i, len(records), config.seed) for i in range(need)]
        cursor, draws = cursor + need, draws + 1
        started = time.perf_counter()
        samples = _sample(config, policy, [ids[i] for i in chosen], step)
        times["sample"] += time.perf_counter() - started
        started = time.perf_counter()
        new = _score(oracle, records, chosen, samples)
        times["score"] += time.perf_counter() - started
        sampled += new
        # a group whose answers all score the same has zero advantage: no gradient (DAPO)
        groups += [g for g in new if not config.dynamic_sampling or len(set(g.rewards)) > 1]
        if not config.dynamic_sampling:
            break
    started = time.perf_counter()
    trained = _train(config, policy, objective, ids, groups) if groups else {}
    times["train"] = time.perf_counter() - started
    failed = _failures(oracle) - failed_before
    return {"step": step + 1, "split": "train", **_sample_metrics(sampled, groups, draws),
            "oracle_failures": failed,
            **trained, **{f"seconds/{name}": value for name, value in times.items()}}, cursor  # fmt: skip


def _failures(oracle) -> int:
    """Answers a verifier failed so far (it raised on them, and scored them 0)."""
    return sum(getattr(oracle, "failures", {}).values())


def _sample(config, policy: Policy, prompts: list[list[int]], step: int):
    settings = SamplingSettings(k=config.k, temperature=config.temperature, top_p=config.top_p,
                                max_new_tokens=config.max_new_tokens,
                                seed=config.seed * 1_000_003 + step)  # fmt: skip
    device = policy.accelerator.device
    precision = decode_precision(config.precision, device)
    autocast = lambda: torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    try:
        return sample(policy.model, policy.tokenizer, prompts, settings, autocast=autocast)
    finally:
        policy.engine.train()


def _score(oracle, records, chosen: list[int], samples) -> list[Group]:
    lists = [ListToJudge(records[i].prompt, tuple(s.text for s in group), records[i].extra)
             for i, group in zip(chosen, samples, strict=True)]  # fmt: skip
    groups = []
    for i, group, judgement in zip(chosen, samples, oracle.judge(lists), strict=True):
        if judgement.abstained is not None or judgement.scores is None:
            rewards = [0.0] * len(group)  # no usable score: no signal from this group
        else:
            rewards = [float(score) for score in judgement.scores]
        if not all(math.isfinite(r) for r in rewards):
            raise TrainingError(f"the oracle gave a reward that is not a finite number to an answer "
                                f"of prompt {i + 1} ({records[i].source}): {rewards}")  # fmt: skip
        # a verifier that raised on an answer scored it 0 and counted it (oracle_failures)
        groups.append(Group(i, list(group), rewards))
    return groups


def _train(config, policy: Policy, objective, ids, groups: list[Group]) -> dict:
    """num_iterations optimizer steps over the step's groups, all in one batch (so that token
    aggregation normalizes over the whole step, as DAPO's)."""
    examples = [TokenizedList(prompt_ids=tuple(ids[g.prompt]),
                              completion_ids=tuple(tuple(s.token_ids) for s in g.samples),
                              scores=tuple(g.rewards)) for g in groups]  # fmt: skip
    device = policy.accelerator.device
    collated = collate(examples, list(range(len(examples))), policy.tokenizer.pad_token_id,
                       share_prompt=True, pad_multiple=16).to(device)  # fmt: skip
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32, device=device)
    mask = torch.ones_like(rewards, dtype=torch.bool)
    if config.mask_truncated:
        mask = torch.tensor(
            [[s.finished != "length" for s in g.samples] for g in groups], device=device
        )
    old = None
    if config.num_iterations > 1:
        with torch.no_grad(), policy.accelerator.autocast():
            old = policy.engine(collated).token_logps
    sampler_logps = torch.tensor([[s.logp for s in g.samples] for g in groups], device=device)
    metrics: dict = {}
    for _ in range(config.num_iterations):
        with policy.accelerator.autocast():
            result = policy.engine(collated)
        mean_old = None
        if config.loss_params.get("unlikeliness"):
            reference = result.token_logps.detach() if old is None else old
            mean_old = (reference * result.token_mask).sum(-1) / result.token_mask.sum(-1).clamp(
                min=1
            )
        advantages = advantages_for(config.objective, config.loss_params, rewards, mask, mean_old)
        batch = ListBatch(logps=result.logps, lengths=result.lengths, scores=rewards, mask=mask,
                          token_logps=result.token_logps, token_mask=result.token_mask,
                          old_token_logps=old, advantages=advantages)  # fmt: skip
        out = objective(batch)
        loss = out.loss.mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss is {loss.item()} (non-finite); lower the learning rate")
        policy.accelerator.backward(loss)
        norm = policy.accelerator.clip_grad_norm_(
            policy.params, config.max_grad_norm or float("inf")
        )
        policy.optimizer.step()
        policy.scheduler.step()
        policy.optimizer.zero_grad(set_to_none=True)
        metrics = {key: float(value.float().nanmean()) for key, value in out.metrics.items()}
        metrics |= {"loss": loss.item(), "grad_norm": float(norm)}
    gap = (sampler_logps - result.logps.detach()).abs().mean().item()
    tokens = int(collated.lengths.sum()) + sum(len(ids[g.prompt]) for g in groups)
    return {**{k: v for k, v in metrics.items() if k not in ("reward", "reward_std", "zero_std")},
            "logp_gap": gap, "train_tokens": tokens, "groups_trained": len(groups)}  # fmt: skip


def _sample_metrics(sampled: list[Group], groups: list[Group], draws: int) -> dict:
    """TRL's names where it has them: over every answer sampled this step."""
    rewards = [r for g in sampled for r in g.rewards]
    lengths = [len(s.token_ids) for g in sampled for s in g.samples]
    stds = [float(np.std(g.rewards, ddof=1)) if len(g.rewards) > 1 else 0.0 for g in sampled]
    return {
        "reward": float(np.mean(rewards)),
        "reward_std": float(np.mean(stds)),
        "frac_reward_zero_std": float(np.mean([s == 0 for s in stds])),
        "completions/mean_length": float(np.mean(lengths)),
        "completions/clipped_ratio": float(
            np.mean([s.finished == "length" for g in sampled for s in g.samples])
        ),  # fmt: skip
        "draws": draws,
        "groups_sampled": len(sampled),
        "no_informative_group": float(not groups),
    }


def _evaluate(config, policy: Policy, oracle, heldout, ids, step: int) -> dict:
    """The held-out prompts answered greedily by the policy and scored by the oracle: the mean
    score with its 95% bootstrap interval over prompts (as `prefopt eval` reports it)."""
    settings = SamplingSettings(k=1, temperature=0.0, max_new_tokens=config.max_new_tokens)
    try:
        answers = sample(policy.model, policy.tokenizer, ids, settings)
    finally:
        policy.engine.train()
    lists = [
        ListToJudge(r.prompt, (a[0].text,), r.extra) for r, a in zip(heldout, answers, strict=True)
    ]
    scores = [[j.scores[0]] for j in oracle.judge(lists) if j.abstained is None and j.scores]
    estimate = bootstrap_mean(scores, seed=config.seed).to_json() if scores else None
    lengths = [len(a[0].token_ids) for a in answers]
    return {"step": step, "split": "eval", "score": estimate, "prompts": len(scores),
            "completions/mean_length": sum(lengths) / len(lengths)}  # fmt: skip


def _checkpoint(policy: Policy, out: Path, state: dict, objective) -> None:
    model = policy.accelerator.unwrap_model(policy.engine)
    save_checkpoint(
        out, model, policy.optimizer, policy.scheduler, dict(state), objective.state_dict()
    )


def _save(policy: Policy, out: Path, config: RLConfig) -> str:
    """The final policy: output_dir/model (adapters with LoRA) and, with LoRA, output_dir/merged."""
    model = policy.model
    model.save_pretrained(out / "model")
    policy.tokenizer.save_pretrained(out / "model")
    if not policy.lora:
        return f"saved the policy to {out / 'model'}"
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    policy.tokenizer.save_pretrained(out / "merged")
    return f"saved the policy to {out / 'model'} and {out / 'merged'}"
