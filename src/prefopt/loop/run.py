"""`prefopt loop`: rounds of generate → acquire → label → train → evaluate, resumable at every
stage. Each stage writes its output atomically in the round's folder before the next stage reads
it, and a stage whose output exists is not run again, so killing the process anywhere and running
`--resume` reaches the state an uninterrupted run reaches (training resumes from its checkpoint,
generation from its file, oracle answers come from the cache).

round-N/candidates.json  the prompts drawn from the pool (seeded, never a used one)
round-N/generations.jsonl  K completions each from the current policy
round-N/acquisition.json  every candidate's score and the chosen lists (with the seed's state)
round-N/labels.jsonl  the oracle's judgements of the chosen lists (ties and abstentions counted, and the
                      next lists by score asked about until the budget is labelled)
round-N/train/  the round's `prefopt train` run on all labelled lists so far (restart) or the new ones
round-N/eval.json  the held-out mean score and win rate against the initial model's answers
rounds.jsonl  one line per round: per-stage seconds, labels used, scores, acquisition statistics"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import torch
from rich.console import Console

from prefopt.data import DataError, read_jsonl
from prefopt.engine.model import forget_loaded
from prefopt.loop.config import LoopConfig
from prefopt.train import Reuse


def _write_json(path: Path, value) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(staging, path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(staging, path)


def loop(config: LoopConfig, *, resume: bool = False, console: Console | None = None) -> list[dict]:
    """Run every round; returns the rounds' records (rounds.jsonl)."""
    from prefopt.generate.run import load_prompts
    from prefopt.settings import save_config

    console = console or Console()
    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()) and not resume:
        raise DataError(f"{out} already holds a loop: add --resume to continue it, or choose another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    pool_rows = {json.dumps(record.prompt, sort_keys=True): record for record in load_prompts(config.prompts)}
    pool = list(pool_rows)
    records = read_jsonl(out / "rounds.jsonl") if (out / "rounds.jsonl").exists() else []
    reuse = Reuse(keep_trained=True)  # models stay in memory between stages and rounds: each folder is read once
    initial_answers = _initial_answers(config, out, reuse, console) if config.heldout else None
    for n in range(len(records), config.rounds):
        console.print(f"[bold]round {n + 1} of {config.rounds}[/]", highlight=False)
        # what this round reads: the initial model, its policy and (continue) the one before
        forget_loaded(reuse.models, {config.model, *(_merged(_policy(config, out, m)) for m in (n, n - 1))})
        record = _round(config, out, n, pool, pool_rows, initial_answers, reuse, console)
        records.append(record)
        _write_jsonl(out / "rounds.jsonl", records)
    return records


def _policy(config: LoopConfig, out: Path, n: int) -> str:
    """The policy of round n: the initial model, or the model the rounds before it trained last."""
    return _trained(config, out, n - 1)


def _trained(config: LoopConfig, out: Path, n: int) -> str:
    """The policy after round n's training: that round's model, or the one before where a round had
    nothing to train on."""
    for m in range(n, -1, -1):
        if (out / f"round-{m}" / "train" / "model").exists():
            return str(out / f"round-{m}" / "train")
    return config.model


def _round(config: LoopConfig, out: Path, n: int, pool: list, pool_rows: dict, initial_answers, reuse: Reuse,
           console) -> dict:
    folder = out / f"round-{n}"
    folder.mkdir(exist_ok=True)
    seconds: dict[str, float] = {}
    overhead: dict[str, float] = {}

    def stage(name: str, path: Path | tuple[Path, ...], run) -> None:  # done when (one of) its path(s) exists
        started, work = time.perf_counter(), 0.0
        if not any(p.exists() for p in (path if isinstance(path, tuple) else (path,))):
            console.print(f"  {name}", highlight=False)
            work = run() or 0.0  # the seconds of the stage's own work (sampling, judging, training)
        seconds[name] = time.perf_counter() - started
        overhead[name] = max(seconds[name] - work, 0.0)

    stage("candidates", folder / "candidates.json", lambda: _candidates(config, out, n, pool, folder))
    stage("generate", folder / "generations.done",
          lambda: _generate(config, out, n, pool_rows, folder, reuse, console))
    stage("acquire", folder / "acquisition.json", lambda: _acquire(config, out, n, folder, reuse))
    stage("label", folder / "labels.jsonl", lambda: _label(config, out, n, folder, console))
    stage("train", (folder / "train" / "model", folder / "train.skipped"),
          lambda: _train(config, out, n, folder, reuse, console))
    if config.heldout:
        stage("evaluate", folder / "eval.json",
              lambda: _evaluate(config, out, n, folder, initial_answers, reuse, console))
    acquisition = json.loads((folder / "acquisition.json").read_text())
    labels = read_jsonl(folder / "labels.jsonl")
    record = {"round": n, "seconds": seconds, "overhead_seconds": overhead,
              "overhead_share": sum(overhead.values()) / max(sum(seconds.values()), 1e-9), "labels": len(labels),
              "late_labels": sum("late_from_round" in row for row in labels),
              "labels_total": sum(len(read_jsonl(out / f"round-{m}" / "labels.jsonl")) for m in range(n + 1)),
              "left_out": json.loads((folder / "labels.left_out.json").read_text()),
              "acquisition": {"function": config.acquisition, "note": acquisition["note"],
                              "chosen_mean_score": acquisition["chosen_mean_score"],
                              "candidate_mean_score": acquisition["candidate_mean_score"]}}
    if (folder / "pairs.json").exists():
        record["pairs"] = json.loads((folder / "pairs.json").read_text())
    if (folder / "regenerate.json").exists():
        record["regenerated"] = len(json.loads((folder / "regenerate.json").read_text()))
    if config.heldout:
        record["eval"] = json.loads((folder / "eval.json").read_text())
    return record


def _used_prompts(out: Path, n: int) -> set[str]:
    """The prompts earlier rounds asked the oracle about (candidates never asked may be drawn again)."""
    used = set()
    for m in range(n):
        keys = json.loads((out / f"round-{m}" / "candidates.json").read_text())
        used |= {keys[i] for i in json.loads((out / f"round-{m}" / "asked.json").read_text())}
    return used


def _candidates(config: LoopConfig, out: Path, n: int, pool: list[str], folder: Path) -> None:
    if config.regenerate and n > 0:
        return _kept_candidates(config, out, n, folder)
    used = _used_prompts(out, n)
    fresh = [key for key in pool if key not in used]
    wanted = config.labels_per_round * config.candidates_per_label
    if not fresh:
        raise DataError(f"{config.prompts}: the prompt pool is exhausted after round {n} (every prompt was drawn)")
    drawn = random.Random(config.seed * 1_000_003 + n).sample(fresh, min(wanted, len(fresh)))
    _write_json(folder / "candidates.json", drawn)


def _kept_candidates(config: LoopConfig, out: Path, n: int, folder: Path) -> None:
    """OPTune's prompts (Chen et al. 2024): the lists round n−1 labelled, again; the `regenerate`
    fraction the oracle scored lowest (lists it gave no label count lowest) to be sampled anew,
    the rest kept with their answers. Writes candidates.json and regenerate.json."""
    before = out / f"round-{n - 1}"
    keys = json.loads((before / "candidates.json").read_text())
    asked = json.loads((before / "asked.json").read_text())
    scores = {row["meta"]["index"]: sum(_values(row)) / len(_values(row))
              for row in read_jsonl(before / "labels.jsonl") if "late_from_round" not in row}
    lowest = sorted(range(len(asked)), key=lambda j: (scores.get(asked[j], -math.inf), j))
    _write_json(folder / "regenerate.json", sorted(lowest[: math.ceil(config.regenerate * len(asked))]))
    _write_json(folder / "candidates.json", [keys[i] for i in asked])  # last: the stage is done when this exists


def _values(row: dict) -> list[float]:
    """A labelled list's scores, higher better (ranks negated)."""
    return row["scores"] if "scores" in row else [-rank for rank in row["ranks"]]


def _generate(config: LoopConfig, out: Path, n: int, pool_rows: dict, folder: Path, reuse: Reuse, console) -> float:
    from prefopt.generate import GenerateConfig

    keys = json.loads((folder / "candidates.json").read_text())
    anew = json.loads((folder / "regenerate.json").read_text()) if (folder / "regenerate.json").exists() else None
    sampled = range(len(keys)) if anew is None else anew
    prompts = folder / "candidates.jsonl"
    _write_jsonl(prompts, [{**pool_rows[keys[i]].extra, "prompt": pool_rows[keys[i]].prompt} for i in sampled])
    target = folder / ("generations.jsonl" if anew is None else "regenerated.jsonl")
    settings = GenerateConfig(model=_merged(_policy(config, out, n)), prompts=str(prompts), out=str(target),
                              k=config.k, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                              seed=config.seed + n, precision=config.precision)
    seconds = _generate_with(settings, reuse, console)
    if anew is not None:  # the kept lists' rows from the round before, the new ones in their places
        before = read_jsonl(out / f"round-{n - 1}" / "generations.jsonl")
        kept = {json.dumps(row["prompt"], sort_keys=True): row for row in before}
        new = dict(zip(anew, read_jsonl(target), strict=True))
        rows = [new.get(i) or {**kept[key], "meta": {**kept[key]["meta"], "kept_from_round": n - 1}}
                for i, key in enumerate(keys)]
        _write_jsonl(folder / "generations.jsonl", [{**row, "meta": {**row["meta"], "index": i}}
                                                    for i, row in enumerate(rows)])
    (folder / "generations.done").write_text("")
    return seconds


def _generate_with(settings, reuse: Reuse, console) -> float:
    """`prefopt generate` with the model and tokenizer from memory; the seconds spent sampling."""
    from prefopt.engine.model import load_model
    from prefopt.generate import generate

    model = load_model(settings.model, loaded=reuse.models) if settings.backend != "vllm" else None
    return generate(settings, resume=True, console=console, model=model,
                    tokenizer=reuse.tokenizer(settings.model)).seconds


def _acquire(config: LoopConfig, out: Path, n: int, folder: Path, reuse: Reuse) -> float:
    """Score every candidate list and choose the budget; returns the seconds of certainty's two
    log-prob passes (the acquisition's own work; the rest is bookkeeping)."""
    from prefopt.acquire.strategies import Acquisition, AcquisitionState, Candidates
    from prefopt.data import load_records
    from prefopt.evaluate.run import logps_table

    generations = load_records(folder / "generations.jsonl", require_scores=False).records
    lengths = torch.tensor([r.extra["meta"]["lengths"] for r in generations], dtype=torch.float64)
    logps = torch.tensor([r.extra["meta"]["logps"] for r in generations], dtype=torch.float64)
    ref, started = None, time.perf_counter()
    if config.acquisition in ("certainty", "hybrid"):
        reference = config.model if config.training == "restart" or n == 0 else _policy(config, out, n - 1)
        ref = logps_table(_merged(reference), generations, config.precision, reuse.models)[0]
        # the same tokens under the policy
        logps = logps_table(_merged(_policy(config, out, n)), generations, config.precision, reuse.models)[0]
    passes = time.perf_counter() - started if ref is not None else 0.0
    beta = config.train.get("loss_params", {}).get("dpo", {}).get("beta", 0.1)
    acquisition = Acquisition(config.acquisition, rule=config.selection, beta=config.selection_beta, dpo_beta=beta,
                              oversample=config.oversample)
    selection, _ = acquisition.select(AcquisitionState(seed=config.seed, round=n),
                                      Candidates(logps=logps, lengths=lengths, ref_logps=ref),
                                      config.labels_per_round)
    scores = selection.scores
    # if the oracle abstains or ties on some chosen lists, the label stage asks about the next ones
    # by score, until the budget is labelled (Muldrew et al. 2024 acquire again until it is)
    reserve = sorted(set(range(len(scores))) - set(selection.indices), key=lambda i: (-scores[i], i))
    _write_json(folder / "acquisition.json", {
        "chosen": selection.indices, "reserve": reserve, "scores": scores, "note": selection.note,
        "chosen_mean_score": sum(scores[i] for i in selection.indices) / max(len(selection.indices), 1),
        "candidate_mean_score": sum(scores) / max(len(scores), 1)})
    return passes


def _label(config: LoopConfig, out: Path, n: int, folder: Path, console) -> float:
    """The oracle's judgements of the chosen lists; lists it abstained or tied on are counted, and
    the next lists by acquisition score are asked about until the budget is labelled or the
    candidates run out. With people, the lists of earlier rounds labelled since their deadline
    join this round's data too. Returns the seconds spent judging."""
    acquisition = json.loads((folder / "acquisition.json").read_text())
    rows = read_jsonl(folder / "generations.jsonl")
    queue, asked, labelled, left_out = list(acquisition["chosen"]), [], [], {}
    reserve = list(acquisition["reserve"])
    started = time.perf_counter()
    scores = acquisition["scores"]
    while queue:
        asked += queue
        # people see the lists in the order of their acquisition scores (the store's priorities)
        chosen = [{**rows[i], "priority": scores[i]} if config.oracle == "people" else rows[i] for i in queue]
        new, reasons = _judged(config, folder, chosen, config.oracle_options, console)
        labelled += new
        for reason, count in reasons.items():
            left_out[reason] = left_out.get(reason, 0) + count
        missing = config.labels_per_round - len(labelled)
        queue, reserve = reserve[:max(missing, 0)], reserve[max(missing, 0):]
    late = _late_labels(config, out, n, folder, console) if config.oracle == "people" else []
    _write_json(folder / "asked.json", asked)
    _write_json(folder / "labels.left_out.json", left_out)
    _write_jsonl(folder / "labels.jsonl", labelled + late)  # last: the stage is done when this exists
    if not labelled:
        console.print("  [yellow]the oracle gave no usable label this round (every list abstained or tied)[/]")
    return time.perf_counter() - started


def _judged(config: LoopConfig, folder: Path, rows: list[dict], options: dict, console) -> tuple[list[dict], dict]:
    """The oracle's labelled lists among `rows` (`prefopt score`), and the counts of those left out."""
    from prefopt.oracles import ScoreConfig, score

    _write_jsonl(folder / "chosen.jsonl", rows)
    result = score(ScoreConfig(generations=str(folder / "chosen.jsonl"), oracle=config.oracle, oracle_options=options,
                               out=str(folder / "labels.partial.jsonl")), console=console)
    labelled = read_jsonl(folder / "labels.partial.jsonl")
    (folder / "labels.partial.jsonl").unlink()
    return labelled, dict(result.left_out)


def _late_labels(config: LoopConfig, out: Path, n: int, folder: Path, console) -> list[dict]:
    """People go on labelling after a round's deadline, while the loop trains: the lists earlier
    rounds asked about and got no usable label for, labelled since, are read from the store now
    (without waiting) and join this round's data, each once. They carry `late_from_round`."""
    taken = {(row["late_from_round"], row["meta"]["index"]) for m in range(n)
             for row in read_jsonl(out / f"round-{m}" / "labels.jsonl") if "late_from_round" in row}
    waiting = []
    for m in range(n):
        earlier = out / f"round-{m}"
        done = {row["meta"]["index"] for row in read_jsonl(earlier / "labels.jsonl") if "late_from_round" not in row}
        rows = read_jsonl(earlier / "generations.jsonl")
        scores = json.loads((earlier / "acquisition.json").read_text())["scores"]  # their priorities, kept
        waiting += [{**rows[i], "priority": scores[i], "late_from_round": m}
                    for i in json.loads((earlier / "asked.json").read_text()) if i not in done and (m, i) not in taken]
    if not waiting:
        return []
    # what is there now, without waiting: lists short of R labels count only where the loop would use them
    keep_short = config.oracle_options.get("on_deadline", "use_what_is_there") == "use_what_is_there"
    options = {**config.oracle_options, "deadline_minutes": 0,
               "on_deadline": "use_what_is_there" if keep_short else "abstain"}
    late, _ = _judged(config, folder, waiting, options, console)
    if late:
        console.print(f"  {len(late)} lists of earlier rounds labelled since their deadline join this round",
                      highlight=False)
    return late


def _train(config: LoopConfig, out: Path, n: int, folder: Path, reuse: Reuse, console) -> float:
    from prefopt.train import TrainConfig, train

    rounds = range(n + 1) if config.training == "restart" else [n]
    rows = [row for m in rounds for row in read_jsonl(out / f"round-{m}" / "labels.jsonl")]
    if config.pair_rule == "best_worst":
        rows = _best_and_worst(rows, config.pair_margin, folder)
    if not rows:  # the policy stays as it is for the next round
        reason = (f"round {n}: no labelled list to train on (the oracle abstained or tied on every one"
                  f"{', or no pair reached pair_margin' if config.pair_rule == 'best_worst' else ''})")
        console.print(f"  [yellow]{reason}: the policy is kept as it is[/]", highlight=False)
        (folder / "train.skipped").write_text(reason + "\n")
        return 0.0
    _write_jsonl(folder / "data.jsonl", rows)
    base = config.model if config.training == "restart" else _policy(config, out, n)
    settings = TrainConfig(**{"eval_fraction": 0.0, **config.train, **config.train_settings(), "model": _merged(base),
                              "data": str(folder / "data.jsonl"), "output_dir": str(folder / "train"),
                              "seed": config.seed + n, "precision": config.precision, "merge": True})
    result = train(settings, resume=True, console=console, reuse=reuse)
    return result.reference_seconds + result.loop_seconds + result.eval_seconds


def _best_and_worst(rows: list[dict], margin: float, folder: Path) -> list[dict]:
    """DNO-Prct's pairs (Rosset et al. 2024, Alg. 2): each labelled list's best and worst answer,
    kept when their score gap (rank gap, for ranks) is at least `margin`; the counts go to
    pairs.json."""
    pairs = []
    for row in rows:
        values = _values(row)
        best = max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equals
        worst = min(range(len(values)), key=lambda i: (values[i], i))
        if values[best] - values[worst] >= margin and values[best] > values[worst]:
            kept = {key: value for key, value in row.items() if key not in ("completions", "scores", "ranks",
                                                                            "judgement")}
            pairs.append({**kept, "chosen": row["completions"][best], "rejected": row["completions"][worst]})
    counts = {"lists": len(rows), "pairs": len(pairs), "below_margin": len(rows) - len(pairs)}
    _write_json(folder / "pairs.json", counts)
    return pairs


def policy_after(config: LoopConfig, n: int) -> str:
    """The model a loop's round n ended with, as a model folder (LoRA merged into its base)."""
    return _merged(_trained(config, Path(config.output_dir), n))


def _merged(spec: str) -> str:
    """A trained LoRA run is trained on as its merged model (the adapters merged into their base)."""
    merged = Path(spec) / "merged"
    return str(merged) if merged.is_dir() else spec


def _initial_answers(config: LoopConfig, out: Path, reuse: Reuse, console) -> Path:
    """The initial model's answers to the held-out prompts, generated once and kept."""
    from prefopt.generate import GenerateConfig

    path = out / "initial-answers.jsonl"
    if not (out / "initial-answers.done").exists():
        _generate_with(GenerateConfig(model=config.model, prompts=config.heldout, out=str(path), k=config.eval_k,
                                      temperature=config.eval_temperature, max_new_tokens=config.max_new_tokens,
                                      seed=config.seed, precision=config.precision), reuse, console)
        (out / "initial-answers.done").write_text("")
    return path


def _evaluate(config: LoopConfig, out: Path, n: int, folder: Path, initial_answers: Path, reuse: Reuse,
              console) -> float:
    from prefopt.evaluate.run import EvalConfig, evaluate

    oracle = config.eval_oracle or config.oracle
    options = config.eval_oracle_options
    if options is None:
        options = config.oracle_options if oracle == config.oracle else {}
    result = evaluate(EvalConfig(model=_merged(_trained(config, out, n)), prompts=config.heldout,
                                 baseline_generations=str(initial_answers), oracle=oracle,
                                 oracle_options=options, k=config.eval_k,
                                 temperature=config.eval_temperature, max_new_tokens=config.max_new_tokens,
                                 seed=config.seed, precision=config.precision, out=str(folder / "eval.partial.json")),
                      console=console, loaded=reuse.models)
    keep = {key: result[key] for key in ("score", "baseline_score", "win_rate") if key in result}
    _write_json(folder / "eval.json", keep)
    (folder / "eval.partial.json").unlink(missing_ok=True)
    return result["seconds"]["generate"] + result["seconds"]["judge"]


__all__ = ["LoopConfig", "loop", "policy_after"]
