"""`prefopt loop`: rounds of generate → acquire → label → train → evaluate, resumable at every
stage. Each stage writes its output atomically in the round's folder before the next stage reads
it, and a stage whose output exists is not run again, so killing the process anywhere and running
`--resume` reaches the state an uninterrupted run reaches (training resumes from its checkpoint,
generation from its file, oracle answers come from the cache). Each stage is a function
`stage(round, loop)` of the round's folder (a `Round`, which names its files) and the loop's
context; it reads only files earlier stages wrote.

round-N/candidates.json  the prompts drawn from the pool (seeded, never a used one)
round-N/generations.jsonl  K completions each from the current policy
round-N/acquisition.json  every candidate's score and the chosen lists (with the seed's state)
round-N/labels.jsonl  the oracle's judgements of the chosen lists (ties and abstentions counted, and the
                      next lists by score asked about until the budget is labelled)
round-N/train/  the round's `prefopt train` run on all labelled lists so far (restart) or the new ones
round-N/eval.json  the held-out mean score and win rate against the initial model's answers
rounds.jsonl  one line per round: per-stage seconds, labels used, scores, acquisition statistics"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import random
import time
from pathlib import Path

import torch
from rich.console import Console

from prefopt.acquire.strategies import Acquisition, AcquisitionState, Candidates
from prefopt.data import DataError, PreferenceRecord, load_records, read_jsonl
from prefopt.engine.model import load_model
from prefopt.evaluate.run import EvalConfig, evaluate, logps_table
from prefopt.files import read_json, write_atomic, write_json, write_jsonl
from prefopt.generate import GenerateConfig, generate, load_prompts
from prefopt.loop.config import LoopConfig
from prefopt.loop.report import loop_report
from prefopt.loop.round import STAGES, Round, RoundRecord
from prefopt.oracles import ScoreConfig, score
from prefopt.processes import ONE_PROCESS, Processes
from prefopt.settings import save_config
from prefopt.train import Reuse, TrainConfig, train
from prefopt.train.trackers import Trackers


@dataclasses.dataclass
class LoopContext:
    """What every stage may read besides its round's files: the settings, the prompt pool, the
    models kept in memory between stages and rounds (each folder is read once), the console."""

    config: LoopConfig
    out: Path
    pool: dict[str, PreferenceRecord]  # by prompt key (its JSON), in the file's order
    reuse: Reuse
    console: Console
    initial_answers: Path | None = None  # the initial model's held-out answers
    processes: Processes = ONE_PROCESS  # a loop launched on several (torchrun, accelerate launch)

    def round(self, n: int) -> Round:
        return Round(self.out, n)

    def policy(self, round: Round) -> str:
        """The policy that samples in `round`: the model the rounds before it trained last."""
        return self.trained_after(round.n - 1)

    def trained_after(self, n: int) -> str:
        """The policy after round n's training (LoRA merged into its base): that round's model, or
        the one before where a round had nothing to train on."""
        for m in range(n, -1, -1):
            if self.round(m).trained_model.exists():
                return merged(str(self.round(m).train_dir))
        return merged(self.config.model)


def loop(
    config: LoopConfig, *, resume: bool = False, console: Console | None = None
) -> list[RoundRecord]:
    """Run every round; returns the rounds' records (rounds.jsonl)."""
    out, processes = Path(config.output_dir), _processes()
    if out.exists() and any(out.iterdir()) and not resume:
        raise DataError(
            f"{out} already holds a loop: add --resume to continue it, or choose another output_dir"
        )
    processes.wait()  # every process looked before the main one writes
    if processes.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    processes.wait()
    pool = {
        json.dumps(record.prompt, sort_keys=True): record for record in load_prompts(config.prompts)
    }
    console = (console or Console()) if processes.main else Console(quiet=True)
    ctx = LoopContext(config, out, pool, Reuse(keep_trained=True), console, processes=processes)
    records: list[RoundRecord] = (
        read_jsonl(out / "rounds.jsonl") if (out / "rounds.jsonl").exists() else []
    )
    if config.heldout:
        ctx.initial_answers = initial_answers(ctx)
    trackers = Trackers.open(config.report_to, out, config.model_dump(), group=out.resolve().name)
    try:
        for n in range(len(records), config.rounds):
            ctx.console.print(f"[bold]round {n + 1} of {config.rounds}[/]", highlight=False)
            round = ctx.round(n)
            # what this round reads: the initial model, its policy and (training: continue) the one before
            ctx.reuse.models.keep_only({config.model, ctx.policy(round), ctx.trained_after(n - 2)})
            records.append(run_round(round, ctx))
            if processes.main:
                write_jsonl(out / "rounds.jsonl", records)
            trackers.log({"step": n + 1, "split": "round", **records[-1]})
        trackers.log_report(lambda: loop_report([out]), len(records))
    finally:
        trackers.close()
    return records


def run_round(round: Round, ctx: LoopContext) -> RoundRecord:
    """Every stage not done yet, in order; the round's record."""
    round.folder.mkdir(exist_ok=True)
    seconds: dict[str, float] = {}
    overhead: dict[str, float] = {}
    for name in STAGES:
        if name == "evaluate" and not ctx.config.heldout:
            continue
        started, work = time.perf_counter(), 0.0
        if not ctx.processes.main_says(round.done(name)):
            ctx.console.print(f"  {name}", highlight=False)
            # the seconds of its own work (sampling, judging, …)
            work = run_stage(name, round, ctx)
        seconds[name] = time.perf_counter() - started
        overhead[name] = max(seconds[name] - work, 0.0)
    return round_record(round, ctx, seconds, overhead)


def _processes() -> Processes:
    """The processes of the launch: one, or those of torchrun / accelerate launch (their group
    started here; it waits as long as a stage of the main process's takes, people labelling)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return ONE_PROCESS
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(days=7))
    return Processes(state.process_index, state.num_processes)


SHARED_STAGES = ("generate", "train")  # the stages every process takes part in


def run_stage(name: str, round: Round, ctx: LoopContext) -> float:
    """A stage on this process: sampling and training on every process (each its share), the
    others on the main process while the rest wait; its files are there for all when it returns."""
    work = 0.0
    if name in SHARED_STAGES or ctx.processes.main:
        work = STAGE_FUNCTIONS[name](round, ctx) or 0.0
    ctx.processes.wait()
    return work


def round_record(
    round: Round, ctx: LoopContext, seconds: dict[str, float], overhead: dict[str, float]
) -> RoundRecord:
    acquisition = read_json(round.acquisition)
    labels = read_jsonl(round.labels)
    record: RoundRecord = {
        "round": round.n,
        "seconds": seconds,
        "overhead_seconds": overhead,
        "overhead_share": sum(overhead.values()) / max(sum(seconds.values()), 1e-9),
        "labels": len(labels),
        "late_labels": sum("late_from_round" in row for row in labels),
        "labels_total": sum(len(read_jsonl(r.labels)) for r in [*round.earlier(), round]),
        "left_out": read_json(round.left_out),
        "acquisition": {
            "function": ctx.config.acquisition,
            "note": acquisition["note"],
            "chosen_mean_score": acquisition["chosen_mean_score"],
            "candidate_mean_score": acquisition["candidate_mean_score"],
        },
    }
    if round.pairs.exists():
        record["pairs"] = read_json(round.pairs)
    if round.regenerate.exists():
        record["regenerated"] = len(read_json(round.regenerate))
    if ctx.config.heldout:
        record["eval"] = read_json(round.eval)
    return record


# ----- candidates -----


def draw_candidates(round: Round, ctx: LoopContext) -> None:
    """The prompts this round samples: drawn from those no earlier round asked the oracle about
    (a candidate never asked may be drawn again), seeded by the round."""
    config = ctx.config
    if config.regenerate and round.n > 0:
        return keep_candidates(round, ctx)
    used = set()
    for earlier in round.earlier():
        keys = read_json(earlier.candidates)
        used |= {keys[i] for i in read_json(earlier.asked)}
    fresh = [key for key in ctx.pool if key not in used]
    wanted = config.labels_per_round * config.candidates_per_label
    if not fresh:
        raise DataError(
            f"{config.prompts}: the prompt pool is exhausted after round {round.n} (every prompt was "
            "drawn)"
        )
    drawn = random.Random(config.seed * 1_000_003 + round.n).sample(fresh, min(wanted, len(fresh)))
    write_json(round.candidates, drawn)


def keep_candidates(round: Round, ctx: LoopContext) -> None:
    """OPTune's prompts (Chen et al. 2024): the lists the round before labelled, again; the
    `regenerate` fraction the oracle scored lowest (lists it gave no label count lowest) to be
    sampled anew, the rest kept with their answers."""
    before = round.previous()
    keys, asked = read_json(before.candidates), read_json(before.asked)
    scores = {
        row["meta"]["index"]: sum(_values(row)) / len(_values(row))
        for row in read_jsonl(before.labels)
        if "late_from_round" not in row
    }
    lowest = sorted(range(len(asked)), key=lambda j: (scores.get(asked[j], -math.inf), j))
    write_json(round.regenerate, sorted(lowest[: math.ceil(ctx.config.regenerate * len(asked))]))
    # last: the stage is done when this exists
    write_json(round.candidates, [keys[i] for i in asked])


def _values(row: dict) -> list[float]:
    """A labelled list's scores, higher better (ranks negated)."""
    return row["scores"] if "scores" in row else [-rank for rank in row["ranks"]]


# ----- generate -----


def generate_lists(round: Round, ctx: LoopContext) -> float:
    """K answers to every candidate from the round's policy (with OPTune, only to those sampled
    anew; the others keep the answers of the round before). Returns the seconds spent sampling."""
    config = ctx.config
    keys = read_json(round.candidates)
    anew = read_json(round.regenerate) if round.regenerate.exists() else None
    sampled = range(len(keys)) if anew is None else anew
    write_jsonl(
        round.candidate_prompts,
        [{**ctx.pool[keys[i]].extra, "prompt": ctx.pool[keys[i]].prompt} for i in sampled],
    )
    target = round.generations if anew is None else round.regenerated
    settings = GenerateConfig(
        model=ctx.policy(round),
        prompts=str(round.candidate_prompts),
        out=str(target),
        k=config.k,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed + round.n,
        precision=config.precision,
        backend=config.backend,
    )
    seconds = generate_with(settings, ctx)
    if anew is not None:  # the kept lists' rows from the round before, the new ones in their places
        kept = {
            json.dumps(row["prompt"], sort_keys=True): row
            for row in read_jsonl(round.previous().generations)
        }
        new = dict(zip(anew, read_jsonl(target), strict=True))
        rows = [
            new.get(i)
            or {**kept[key], "meta": {**kept[key]["meta"], "kept_from_round": round.n - 1}}
            for i, key in enumerate(keys)
        ]
        write_jsonl(
            round.generations,
            [{**row, "meta": {**row["meta"], "index": i}} for i, row in enumerate(rows)],
        )
    write_json(round.generated, len(keys))
    return seconds


def generate_with(settings: GenerateConfig, ctx: LoopContext) -> float:
    """`prefopt generate` with the model and tokenizer from memory; the seconds spent sampling."""
    model = (
        load_model(settings.model, cache=ctx.reuse.models) if settings.backend != "vllm" else None
    )
    return generate(
        settings,
        resume=True,
        console=ctx.console,
        model=model,
        tokenizer=ctx.reuse.tokenizer(settings.model),
        processes=ctx.processes,
    ).seconds


# ----- acquire -----


def acquire(round: Round, ctx: LoopContext) -> float:
    """Score every candidate list and choose the budget; returns the seconds of certainty's two
    log-prob passes (the acquisition's own work; the rest is bookkeeping)."""
    config = ctx.config
    generations = load_records(round.generations, require_scores=False).records
    lengths = torch.tensor([r.extra["meta"]["lengths"] for r in generations], dtype=torch.float64)
    logps = torch.tensor([r.extra["meta"]["logps"] for r in generations], dtype=torch.float64)
    ref, started = None, time.perf_counter()
    if config.acquisition in ("certainty", "hybrid"):
        restart = config.training == "restart" or round.n == 0
        reference = merged(config.model) if restart else ctx.policy(round.previous())
        ref = logps_table(reference, generations, config.precision, ctx.reuse.models)[0]
        # the same tokens under the policy
        logps = logps_table(ctx.policy(round), generations, config.precision, ctx.reuse.models)[0]
    passes = time.perf_counter() - started if ref is not None else 0.0
    acquisition = Acquisition(
        config.acquisition,
        rule=config.selection,
        beta=config.selection_beta,
        dpo_beta=config.implicit_reward_beta(),
        oversample=config.oversample,
    )
    selection, _ = acquisition.select(
        AcquisitionState(seed=config.seed, round=round.n),
        Candidates(logps=logps, lengths=lengths, ref_logps=ref),
        config.labels_per_round,
    )
    scores = selection.scores
    # if the oracle abstains or ties on some chosen lists, the label stage asks about the next ones
    # by score, until the budget is labelled (Muldrew et al. 2024 acquire again until it is)
    reserve = sorted(
        set(range(len(scores))) - set(selection.indices), key=lambda i: (-scores[i], i)
    )
    write_json(
        round.acquisition,
        {
            "chosen": selection.indices,
            "reserve": reserve,
            "scores": scores,
            "note": selection.note,
            "chosen_mean_score": sum(scores[i] for i in selection.indices)
            / max(len(selection.indices), 1),
            "candidate_mean_score": sum(scores) / max(len(scores), 1),
        },
    )
    return passes


# ----- label -----


def label(round: Round, ctx: LoopContext) -> float:
    """The oracle's judgements of the chosen lists; lists it abstained or tied on are counted, and
    the next lists by acquisition score are asked about until the budget is labelled or the
    candidates run out. With people, the lists of earlier rounds labelled since their deadline
    join this round's data too. Returns the seconds spent judging."""
    config = ctx.config
    acquisition = read_json(round.acquisition)
    rows = read_jsonl(round.generations)
    queue, reserve, scores = (
        list(acquisition["chosen"]),
        list(acquisition["reserve"]),
        acquisition["scores"],
    )
    asked, labelled, left_out = [], [], {}
    started = time.perf_counter()
    while queue:
        asked += queue
        # people see the lists in the order of their acquisition scores (the store's priorities)
        chosen = [
            {**rows[i], "priority": scores[i]} if config.oracle == "people" else rows[i]
            for i in queue
        ]
        new, reasons = judged(round, ctx, chosen, config.oracle_options)
        labelled += new
        for reason, count in reasons.items():
            left_out[reason] = left_out.get(reason, 0) + count
        missing = max(config.labels_per_round - len(labelled), 0)
        queue, reserve = reserve[:missing], reserve[missing:]
    late = late_labels(round, ctx) if config.oracle == "people" else []
    write_json(round.asked, asked)
    write_json(round.left_out, left_out)
    write_jsonl(round.labels, labelled + late)  # last: the stage is done when this exists
    if not labelled:
        ctx.console.print(
            "  [yellow]the oracle gave no usable label this round (every list abstained or tied)[/]"
        )
    return time.perf_counter() - started


def judged(
    round: Round, ctx: LoopContext, rows: list[dict], options: dict
) -> tuple[list[dict], dict]:
    """The oracle's labelled lists among `rows` (`prefopt score`), and the counts of those left out."""
    write_jsonl(round.chosen, rows)
    result = score(
        ScoreConfig(
            generations=str(round.chosen),
            oracle=ctx.config.oracle,
            oracle_options=options,
            out=str(round.judged),
        ),
        console=ctx.console,
    )
    labelled = read_jsonl(round.judged)
    round.judged.unlink()
    return labelled, dict(result.left_out)


def late_labels(round: Round, ctx: LoopContext) -> list[dict]:
    """People go on labelling after a round's deadline, while the loop trains: the lists earlier
    rounds asked about and got no usable label for, labelled since, are read from the store now
    (without waiting) and join this round's data, each once. They carry `late_from_round`."""
    earlier = round.earlier()
    taken = {
        (row["late_from_round"], row["meta"]["index"])
        for r in earlier
        for row in read_jsonl(r.labels)
        if "late_from_round" in row
    }
    waiting = []
    for r in earlier:
        done = {
            row["meta"]["index"] for row in read_jsonl(r.labels) if "late_from_round" not in row
        }
        rows = read_jsonl(r.generations)
        scores = read_json(r.acquisition)["scores"]  # their priorities, kept
        waiting += [
            {**rows[i], "priority": scores[i], "late_from_round": r.n}
            for i in read_json(r.asked)
            if i not in done and (r.n, i) not in taken
        ]
    if not waiting:
        return []
    # what is there now, without waiting: lists short of R labels count only where the loop would use them
    keep_short = (
        ctx.config.oracle_options.get("on_deadline", "use_what_is_there") == "use_what_is_there"
    )
    options = {
        **ctx.config.oracle_options,
        "deadline_minutes": 0,
        "on_deadline": "use_what_is_there" if keep_short else "abstain",
    }
    late, _ = judged(round, ctx, waiting, options)
    if late:
        ctx.console.print(
            f"  {len(late)} lists of earlier rounds labelled since their deadline join this round",
            highlight=False,
        )
    return late


# ----- train -----


def train_round(round: Round, ctx: LoopContext) -> float:
    """`prefopt train` on the labelled lists (restart: of every round so far, from the initial
    model; continue: this round's, from its policy). Returns the seconds of the run's own work."""
    config = ctx.config
    rows = [
        row
        for r in ([*round.earlier(), round] if config.training == "restart" else [round])
        for row in read_jsonl(r.labels)
    ]
    if config.pair_rule == "best_worst":
        rows = best_and_worst(rows, config.pair_margin, round)
    if not rows:  # the policy stays as it is for the next round
        reason = (
            f"round {round.n}: no labelled list to train on (the oracle abstained or tied on every one"
            f"{', or no pair reached pair_margin' if config.pair_rule == 'best_worst' else ''})"
        )
        ctx.console.print(f"  [yellow]{reason}: the policy is kept as it is[/]", highlight=False)
        write_atomic(round.train_skipped, reason + "\n")
        return 0.0
    write_jsonl(round.data, rows)
    base = merged(config.model) if config.training == "restart" else ctx.policy(round)
    settings = TrainConfig(
        **{
            "eval_fraction": 0.0,
            **config.train,
            **config.train_settings(),
            "model": base,
            "data": str(round.data),
            "output_dir": str(round.train_dir),
            "report_to": config.report_to,
            "report_group": Path(config.output_dir).resolve().name,
            "run_name": f"round-{round.n}",
            "seed": config.seed + round.n,
            "precision": config.precision,
            "merge": True,
        }
    )
    result = train(settings, resume=True, console=ctx.console, reuse=ctx.reuse)
    return result.reference_seconds + result.loop_seconds + result.eval_seconds


def best_and_worst(rows: list[dict], margin: float, round: Round) -> list[dict]:
    """DNO-Prct's pairs (Rosset et al. 2024, Alg. 2): each labelled list's best and worst answer,
    kept when their score gap (rank gap, for ranks) is at least `margin`; the counts go to
    pairs.json."""
    pairs = []
    for row in rows:
        values = _values(row)
        best = max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equals
        worst = min(range(len(values)), key=lambda i: (values[i], i))
        if values[best] - values[worst] >= margin and values[best] > values[worst]:
            kept = {
                key: value
                for key, value in row.items()
                if key not in ("completions", "scores", "ranks", "judgement")
            }
            pairs.append(
                {**kept, "chosen": row["completions"][best], "rejected": row["completions"][worst]}
            )
    write_json(
        round.pairs,
        {"lists": len(rows), "pairs": len(pairs), "below_margin": len(rows) - len(pairs)},
    )
    return pairs


def merged(spec: str) -> str:
    """A trained LoRA run is trained on as its merged model (the adapters merged into their base)."""
    folder = Path(spec) / "merged"
    return str(folder) if folder.is_dir() else spec


def policy_after(config: LoopConfig, n: int) -> str:
    """The model a loop's round n ended with, as a model folder (LoRA merged into its base)."""
    return LoopContext(config, Path(config.output_dir), {}, Reuse(), Console()).trained_after(n)


# ----- evaluate -----


def initial_answers(ctx: LoopContext) -> Path:
    """The initial model's answers to the held-out prompts, generated once and kept."""
    config, path = ctx.config, ctx.out / "initial-answers.jsonl"
    done = ctx.out / "initial-answers.done"
    if not ctx.processes.main_says(done.exists()):
        generate_with(
            GenerateConfig(
                model=config.model,
                prompts=config.heldout,
                out=str(path),
                k=config.eval_k,
                temperature=config.eval_temperature,
                max_new_tokens=config.max_new_tokens,
                seed=config.seed,
                precision=config.precision,
                backend=config.backend,
            ),
            ctx,
        )
        write_json(done, True)
    return path


def evaluate_round(round: Round, ctx: LoopContext) -> float:
    """The held-out answers of the policy the round trained, scored against the initial model's.
    Returns the seconds spent generating and judging."""
    config = ctx.config
    oracle = config.eval_oracle or config.oracle
    options = config.eval_oracle_options
    if options is None:
        options = config.oracle_options if oracle == config.oracle else {}
    result = evaluate(
        EvalConfig(
            model=ctx.trained_after(round.n),
            prompts=config.heldout,
            baseline_generations=str(ctx.initial_answers),
            oracle=oracle,
            oracle_options=options,
            k=config.eval_k,
            temperature=config.eval_temperature,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            precision=config.precision,
            backend=config.backend,
            out=str(round.eval_result),
        ),
        console=ctx.console,
        cache=ctx.reuse.models,
    )
    write_json(
        round.eval,
        {key: result[key] for key in ("score", "baseline_score", "win_rate") if key in result},
    )
    return result["seconds"]["generate"] + result["seconds"]["judge"]


STAGE_FUNCTIONS = {
    "candidates": draw_candidates,
    "generate": generate_lists,
    "acquire": acquire,
    "label": label,
    "train": train_round,
    "evaluate": evaluate_round,
}

__all__ = ["LoopConfig", "LoopContext", "Round", "RoundRecord", "loop", "policy_after"]
