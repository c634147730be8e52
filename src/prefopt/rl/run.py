"""`prefopt rl`: online, group-relative RL. Each step draws prompts, samples K answers to each
with the live policy (LoRA adapters applied in memory: nothing is saved or merged per step)
through the shared-prefill sampler, scores every answer with the oracle, computes the
objective's advantages over the whole step, and trains on the packed engine, where each group's
prompt is encoded once for its K answers. Resumable: samples are seeded per (seed, step, prompt,
k) and the prompt order per epoch, so a run resumed from its checkpoint reaches the weights and
metrics of a run never stopped. Under several data-parallel processes each samples and scores
every n-th prompt of a step, all see the whole step (the same decisions), each trains on its share
with the batch-wide denominators of the objective, and the run reaches one process's weights.

How a step trains: prefopt.rl.update."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import get_scheduler

from prefopt.data import TokenizeSettings
from prefopt.data.tokenize import prompt_ids
from prefopt.engine.decode_model import DecodeModel, checkpoint_weights
from prefopt.engine.frozen import keep_frozen_in, restore_frozen
from prefopt.engine.hostmem import release_freed_memory
from prefopt.engine.logps import CompletionLogpsModel
from prefopt.engine.model import LoraSettings, load_model, load_tokenizer, resolve_model_path
from prefopt.engine.precision import decode_precision
from prefopt.engine.settings import EngineSettings
from prefopt.evaluate.stats import bootstrap_mean, win_rate
from prefopt.files import write_jsonl
from prefopt.generate import SamplingSettings, load_prompts, sample
from prefopt.generate.vllm_backend import VllmSampler
from prefopt.oracles import ListToJudge
from prefopt.rl.config import RLConfig
from prefopt.rl.policy import Group, Policy
from prefopt.rl.report import rl_report
from prefopt.rl.rewards import Rewards
from prefopt.rl.update import train_step
from prefopt.settings import save_config
from prefopt.train.cards import CardFacts, write_card
from prefopt.train.checkpoint import checkpoint_run, latest_checkpoint, load_checkpoint
from prefopt.train.loop import accelerator_for, seed_everything
from prefopt.train.metrics import MetricsLog, brief
from prefopt.train.sharding import is_sharded
from prefopt.train.trackers import Trackers


@dataclasses.dataclass
class RLResult:
    output_dir: Path
    steps: int
    seconds: float
    last: dict  # the last step's metrics


@dataclasses.dataclass
class Prompts:
    """Prompt records and their token ids."""

    records: list
    ids: list[list[int]]

    @classmethod
    def load(cls, source: str | None, tokenizer, settings: TokenizeSettings) -> Prompts:
        records = load_prompts(source) if source else []
        return cls(records, [prompt_ids(record, tokenizer, settings) for record in records])


def rl(config: RLConfig, *, resume: bool = False, console: Console | None = None,
       on_step=None) -> RLResult:  # fmt: skip
    """Run `config.max_steps` steps (from the last checkpoint with `resume`). `on_step(step,
    record)` is called after each."""
    started, out = time.perf_counter(), Path(config.output_dir)
    policy = _policy(config, console or Console())
    main = policy.processes.main
    console = (console or Console()) if main else Console(quiet=True)
    objective, rewards = config.build_objective(), Rewards.of(config.oracle_specs())
    settings = TokenizeSettings(max_prompt_tokens=config.max_prompt_tokens,
                                chat_template=config.chat_template)  # fmt: skip
    prompts = Prompts.load(config.prompts, policy.tokenizer, settings)
    heldout = Prompts.load(config.heldout, policy.tokenizer, settings)
    state = _restore(config, policy, out, resume, console)
    trackers = Trackers.open(config.report_to, out, config.model_dump(), name=config.run_name)
    log = MetricsLog(out / "metrics.jsonl", state["step"] if state["step"] else -1, enabled=main,
                     sink=trackers.log)  # fmt: skip
    record: dict = {}
    columns = [TextColumn("[bold]rl"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]  # fmt: skip
    try:
        initial = _initial_answers(config, policy, heldout, out) if heldout.records else None
        evaluation: dict = {}
        if initial is not None and state["step"] == 0:
            evaluation = _evaluate(config, policy, rewards, heldout, initial, 0, out)
            log.write(evaluation)
        with Progress(*columns, console=console, disable=not main) as progress:
            task = progress.add_task(
                "rl", total=config.max_steps, completed=state["step"], status=""
            )
            while state["step"] < config.max_steps:
                record, state["cursor"] = _step(
                    config, policy, objective, rewards, prompts, state["step"], state["cursor"]
                )
                state["step"] += 1
                last = state["step"] == config.max_steps
                if state["step"] % config.log_every == 0 or last:
                    log.write(record)
                every = config.eval_every and state["step"] % config.eval_every == 0
                if initial is not None and (every or last):
                    evaluation = _evaluate(config, policy, rewards, heldout, initial,
                                           state["step"], out)  # fmt: skip
                    log.write(evaluation)
                progress.update(task, completed=state["step"], status=brief(record))
                if config.save_every and state["step"] % config.save_every == 0:
                    _checkpoint(policy, out, state, objective)
                if on_step is not None:
                    on_step(state["step"], record)
        trackers.log_report(lambda: rl_report(out), state["step"])
    finally:
        rewards.close()
        trackers.close()
    _checkpoint(policy, out, state, objective)
    model = policy.plain_model()
    if main:
        facts = CardFacts(
            base_model=config.model, command="prefopt rl", objective=objective.terms(),
            data=config.prompts, counts={"prompts": len(prompts.records), "steps": state["step"]},
            settings={key: getattr(config, key) for key in CARD_SETTINGS}
            | {"oracle": " + ".join(config.oracle_names)},
            evaluation={key: value for key, value in evaluation.items() if key not in ("step", "split")},
        )  # fmt: skip
        console.print(_save(policy, model, out, facts), highlight=False)
    policy.accelerator.wait_for_everyone()
    return RLResult(out, state["step"], time.perf_counter() - started, record)


def _policy(config: RLConfig, console: Console) -> Policy:
    accelerator, precision, why = accelerator_for(config)
    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    engine, sharded = _engine(config), is_sharded(accelerator)
    if precision == "bf16" and config.lora and not sharded:  # the same numbers, less memory
        keep_frozen_in(engine.model, torch.bfloat16, resolve_model_path(config.model))
    params = [p for p in engine.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=accelerator.device.type in ("cpu", "cuda"))  # fmt: skip
    engine, optimizer = accelerator.prepare(engine, optimizer)
    params = [p for p in engine.parameters() if p.requires_grad]  # FSDP's are new (sharded)
    scheduler = get_scheduler("constant", optimizer)
    total = sum(p.numel() for p in engine.parameters())
    if accelerator.is_main_process:
        console.print(f"model: {config.model} ({total / 1e6:.1f} M parameters, "
                      f"{sum(p.numel() for p in params) / 1e6:.2f} M trained), precision "
                      f"{precision} ({why}); objective {config.objective}, oracle "
                      f"{' + '.join(config.oracle_names)}", highlight=False)  # fmt: skip
    # a sharded policy samples from a plain copy on every process
    source = _engine(config) if sharded else accelerator.unwrap_model(engine)
    decode = DecodeModel(source.model, decode_precision(config.precision, accelerator.device))
    vllm = None
    if config.backend == "vllm":  # loads the initial policy from its folder, as the trainer did
        vllm = VllmSampler(config.model, decode.precision, config.seed,
                           config.vllm_gpu_memory_utilization)  # fmt: skip
    return Policy(accelerator, engine, optimizer, scheduler, params, tokenizer, precision,
                  config.lora, decode, copy=source if sharded else None, vllm=vllm,
                  reference=_reference(config, accelerator, precision))  # fmt: skip


def _engine(config: RLConfig, *, trained: bool = True) -> CompletionLogpsModel:
    """The training engine around the model; `trained=False`: the plain model, frozen."""
    lora = None
    if config.lora and trained:
        lora = LoraSettings(
            config.lora_r, config.lora_alpha, 0.0, tuple(config.lora_target_modules)
        )
    settings = EngineSettings()
    model = load_model(config.model, lora=lora, engine=settings,
                       gradient_checkpointing=config.gradient_checkpointing and trained)  # fmt: skip
    return CompletionLogpsModel(model, settings, with_tokens=True)


def _reference(config: RLConfig, accelerator, precision: str) -> torch.nn.Module | None:
    """A full fine-tuning's reference for the KL term (β > 0): the initial model, frozen, on
    every process (bf16 weights where training computes in bf16: the same numbers, half the
    memory). LoRA's reference is the policy with its adapters off, and β = 0 needs none."""
    if config.lora or "ref_tokens" not in config.build_objective().needs:
        return None
    reference = _engine(config, trained=False).requires_grad_(False).eval()
    if precision == "bf16":
        keep_frozen_in(reference.model, torch.bfloat16, resolve_model_path(config.model))
    return reference.to(accelerator.device)


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
    elif policy.processes.main:
        if resume:
            console.print(f"[yellow]no checkpoint in {out}; starting from the beginning[/]")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / "eval", ignore_errors=True)
    if policy.processes.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    policy.accelerator.wait_for_everyone()
    return state


def _prompt_at(position: int, count: int, seed: int) -> int:
    """The prompt at `position` of the run's order: epochs over the pool, each shuffled by the seed."""
    epoch, offset = divmod(position, count)
    return random.Random(seed * 1_000_003 + epoch).sample(range(count), count)[offset]


def _step(config, policy: Policy, objective, rewards: Rewards, prompts: Prompts, step: int,
          cursor: int):  # fmt: skip
    """One step: sample, score, train. Returns its metrics record and the prompt cursor after it."""
    times, groups, sampled, draws = {"sample": 0.0, "score": 0.0}, [], [], 0
    failed_before, processes = rewards.failures, policy.processes
    while len(groups) < config.prompts_per_step and draws < config.max_draws:
        need = config.prompts_per_step - len(groups)
        chosen = [_prompt_at(cursor + i, len(prompts.ids), config.seed) for i in range(need)]
        cursor, draws = cursor + need, draws + 1
        started = time.perf_counter()
        samples = processes.map(
            lambda mine: _sample(config, policy, [prompts.ids[i] for i in mine], step), chosen
        )
        times["sample"] += time.perf_counter() - started
        started = time.perf_counter()
        pairs = list(zip(chosen, samples, strict=True))
        new = processes.map(lambda mine: _score(rewards, prompts.records, mine), pairs)
        times["score"] += time.perf_counter() - started
        sampled += new
        # a group whose answers all score the same has zero advantage: no gradient (DAPO)
        groups += [g for g in new if not config.dynamic_sampling or len(set(g.rewards)) > 1]
        if not config.dynamic_sampling:
            break
    started = time.perf_counter()
    # sampling's freed caches and the sampling copy's weights, before training allocates its own
    # (the copy is written again from the trained policy before the next sampling)
    policy.decode.release()
    policy.stale = True
    release_freed_memory()
    trained = train_step(config, policy, objective, prompts.ids, groups) if groups else {}
    times["train"] = time.perf_counter() - started
    failed = sum(processes.gather([rewards.failures - failed_before]))
    return {"step": step + 1, "split": "train", **_sample_metrics(sampled, groups, draws),
            **rewards.metrics([g.scored for g in sampled]), "oracle_failures": failed,
            **trained, **{f"seconds/{name}": value for name, value in times.items()}}, cursor  # fmt: skip


def _sample(config, policy: Policy, prompts: list[list[int]], step: int):
    settings = SamplingSettings(k=config.k, temperature=config.temperature, top_p=config.top_p,
                                max_new_tokens=config.max_new_tokens,
                                seed=config.seed * 1_000_003 + step)  # fmt: skip
    return _answers(policy, prompts, settings)


def _answers(policy: Policy, prompts: list[list[int]], settings: SamplingSettings):
    """The live policy's answers (its engine back in training mode after)."""
    if policy.vllm is not None:
        if policy.stale:
            policy.vllm.load_weights(checkpoint_weights(policy.plain_model()))
            policy.stale = False
        return policy.vllm.sample(prompts, settings)
    if policy.stale:
        policy.plain_model()
        policy.decode.refresh()
        policy.stale = False
    decode = policy.decode
    try:
        return sample(decode.model, policy.tokenizer, prompts, settings, precision=decode.precision)
    finally:
        policy.engine.train()


def _score(rewards: Rewards, records, pairs: list[tuple[int, list]]) -> list[Group]:
    """Each prompt's answers scored (a verifier that raises on an answer scores it 0 and counts
    it: oracle_failures)."""
    lists = [ListToJudge(records[i].prompt, tuple(s.text for s in group), records[i].extra)
             for i, group in pairs]  # fmt: skip
    sources = [f"prompt {i + 1} ({records[i].source})" for i, _ in pairs]
    scored = rewards.score(lists, sources)
    return [Group(i, list(group), s) for (i, group), s in zip(pairs, scored, strict=True)]


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


def eval_answers(out: Path, step: int) -> Path:
    """The held-out answers of the evaluation at `step` (step 0: the initial policy's)."""
    return Path(out) / "eval" / f"step-{step}.jsonl"


def _greedy(config, policy: Policy, heldout: Prompts) -> list[tuple[str, int]]:
    settings = SamplingSettings(k=1, temperature=0.0, max_new_tokens=config.max_new_tokens)
    answers = policy.processes.map(lambda mine: _answers(policy, mine, settings), heldout.ids)
    return [(a[0].text, len(a[0].token_ids)) for a in answers]


def _write_answers(path: Path, heldout: Prompts, answers: list[tuple[str, int]]) -> None:
    """Rows as `prefopt generate` writes them: the record, its answer, the answer's length."""
    write_jsonl(path, [{**record.extra, "prompt": record.prompt, "completions": [text],
                        "meta": {"lengths": [length]}}
                       for record, (text, length) in zip(heldout.records, answers, strict=True)])  # fmt: skip


def _initial_answers(config, policy: Policy, heldout: Prompts, out: Path) -> list:
    """The initial policy's greedy held-out answers: answered at the start, kept in the file that
    a resumed run reads back."""
    path = eval_answers(out, 0)
    if not path.exists():
        answers = _greedy(config, policy, heldout)
        if policy.processes.main:
            _write_answers(path, heldout, answers)
        policy.accelerator.wait_for_everyone()
    rows = map(json.loads, path.read_text(encoding="utf-8").splitlines())
    return [(row["completions"][0], row["meta"]["lengths"][0]) for row in rows]


def _evaluate(config, policy: Policy, rewards: Rewards, heldout: Prompts, initial, step: int,
              out: Path) -> dict:  # fmt: skip
    """The held-out prompts answered greedily by the policy (kept in eval/step-N.jsonl) and scored
    by the reward: the mean with its 95% bootstrap interval over prompts (as `prefopt eval`
    reports it), and the win rate against the initial policy's answers, each pair judged together
    (ties count half)."""
    answers = initial if step == 0 else _greedy(config, policy, heldout)
    if step and policy.processes.main:
        _write_answers(eval_answers(out, step), heldout, answers)
    records = heldout.records

    def judge(mine: list[int]) -> list:
        lists = [ListToJudge(records[i].prompt, (answers[i][0], initial[i][0]), records[i].extra)
                 for i in mine]  # fmt: skip
        scored = rewards.score(lists, [f"held-out prompt {i + 1}" for i in mine])
        return [(s.rewards, any(v is not None for v in s.by_oracle.values())) for s in scored]

    judged = [(now, then) for (now, then), applied in policy.processes.map(judge,
              range(len(records))) if applied]  # fmt: skip
    boot = {"seed": config.seed}
    record = {"step": step, "split": "eval", "prompts": len(judged),
              "completions/mean_length": float(np.mean([n for _, n in answers]))}  # fmt: skip
    if judged:
        record["score"] = bootstrap_mean([[now] for now, _ in judged], **boot).to_json()
        preferences = [float(np.sign(now - then) / 2 + 0.5) for now, then in judged]
        record["win_rate"] = win_rate(preferences, **boot).rate.to_json()
    return record


# the settings a model card lists
CARD_SETTINGS = ("objective", "k", "prompts_per_step", "max_new_tokens", "temperature",
                 "num_iterations", "learning_rate", "lora", "lora_r", "precision", "seed")  # fmt: skip


def _checkpoint(policy: Policy, out: Path, state: dict, objective) -> None:
    checkpoint_run(policy.accelerator, out, policy.accelerator.unwrap_model(policy.engine),
                   policy.optimizer, policy.scheduler, dict(state), objective.state_dict())  # fmt: skip


def _save(policy: Policy, model, out: Path, facts: CardFacts) -> str:
    """The final policy `model`: output_dir/model (adapters with LoRA) and, with LoRA,
    output_dir/merged, each with its model card."""
    restore_frozen(model)  # the saved model keeps its base weights' float32 values
    model.save_pretrained(out / "model")
    policy.tokenizer.save_pretrained(out / "model")
    write_card(out / "model", facts)
    if not policy.lora:
        return f"saved the policy to {out / 'model'}"
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    policy.tokenizer.save_pretrained(out / "merged")
    write_card(out / "merged", facts)
    return f"saved the policy to {out / 'model'} and {out / 'merged'}"
