"""`prefopt eval`: did the model get better?

- **On prompts**: the model's answers (generated here, or given) scored by any oracle: the mean
  score with a bootstrap interval over prompts; against a baseline's answers, the win rate (ties
  as half, judge failures counted apart) with its paired interval, the length-controlled rate
  beside it and both sides' mean lengths; and, given a reference, an estimate of KL(policy ‖
  reference) from the policy's own samples.
- **On preference data**: reward accuracy, the ranking accuracy of the policy's likelihood (raw
  and length-normalised), the idealized ranking accuracy the exact optimum would reach at the
  run's β, and each pair's difficulty (Chen et al. 2024).

The numbers go to a JSON file and a table on the terminal; `prefopt loop` and `prefopt tune`
read theirs from the same functions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from prefopt.data import (
    Batching,
    DataError,
    PreferenceRecord,
    TokenizeSettings,
    load_records,
    tokenize_records,
)
from prefopt.engine.logps import CompletionLogpsModel
from prefopt.engine.model import ModelCache, load_model, load_tokenizer
from prefopt.engine.precision import choose_precision
from prefopt.evaluate.stats import (
    bootstrap_mean,
    difficulty,
    idealized_log_ratio,
    kl_estimate,
    win_rate,
)
from prefopt.files import write_json
from prefopt.generate import GenerateConfig, generate
from prefopt.oracles import ORACLES, ListToJudge, make_oracle
from prefopt.oracles.cache import judge
from prefopt.oracles.score import answer_cache
from prefopt.registry import registered
from prefopt.train.reference import reference_logps


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        "default",
        description="The model evaluated: HF id or folder, .gguf, `default`, or a "
        "`prefopt train` output folder.",
    )
    prompts: str | None = Field(
        None, description="On prompts: generate the model's answers to these."
    )
    generations: str | None = Field(
        None,
        description="On prompts: the model's answers, already generated "
        "(`prefopt generate` output).",
    )
    baseline: str | None = Field(
        None,
        description="A model to compare with: its answers to the same prompts are "
        "generated with the same settings.",
    )
    baseline_generations: str | None = Field(
        None, description="The baseline's answers, already generated."
    )
    oracle: Annotated[str, registered(ORACLES)] | None = Field(
        None, description="Scores the answers (verifier, reward_model, judge, people)."
    )
    oracle_options: dict[str, Any] = Field(
        default_factory=dict, description="The oracle's options."
    )
    data: str | None = Field(
        None,
        description="On preference data: pairs or ranked lists to check the model's "
        "likelihoods and implicit rewards against.",
    )
    reference: str | None = Field(
        None,
        description="The reference model (implicit rewards, KL); default: a "
        "train run's own reference (the adapters' base, or its initial "
        "model).",
    )
    beta: float = Field(
        0.1, gt=0, description="β of the implicit reward and of the idealized ranking accuracy."
    )
    alpha: float | None = Field(
        None,
        gt=0.5,
        le=1,
        description="On data: the true preference probability of each "
        "pair; default a row's `alpha` field, else 1 "
        "(unanimous, clipped to 0.999).",
    )
    k: int = Field(1, ge=1, description="Answers per prompt when generating.")
    temperature: float = Field(1.0, ge=0, description="When generating.")
    max_new_tokens: int = Field(128, ge=1, description="When generating.")
    backend: Literal["prefopt", "transformers", "vllm"] = Field(
        "prefopt", description="What generates, as in `prefopt generate`."
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Prompts decoded together when generating (with one answer "
        "each, a small batch leaves the machine idle).",
    )
    seed: int = Field(0, description="Generation and bootstrap seed.")
    resamples: int = Field(2000, ge=100, description="Bootstrap resamples.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="As in `prefopt train`.")
    out: str = Field("eval.json", description="Where the results go (generated answers beside it).")

    @model_validator(mode="after")
    def _one_mode(self):
        on_prompts = self.prompts is not None or self.generations is not None
        if on_prompts == (self.data is not None):
            raise ValueError(
                "give prompts (or generations) to evaluate answers, or data to evaluate likelihoods"
            )
        if on_prompts and self.oracle is None:
            raise ValueError("evaluating answers needs an oracle to score them")
        return self


def evaluate(
    config: EvalConfig, *, console: Console | None = None, cache: ModelCache | None = None
) -> dict:
    """Evaluate as `config` says; `cache` keeps models already read (see engine.model.ModelCache)."""
    console = console or Console()
    result = _on_data(config) if config.data is not None else _on_prompts(config, console, cache)
    write_json(config.out, result)
    return result


# ----- on prompts -----


def _answers(
    config: EvalConfig, which: str, console: Console, cache: ModelCache | None
) -> tuple[list[PreferenceRecord] | None, float]:
    """The model's (or the baseline's) answers: read, or generated into a file beside the output;
    and the seconds spent sampling them."""
    given, model = (
        (config.generations, config.model)
        if which == "model"
        else (config.baseline_generations, config.baseline)
    )
    if given is None and model is None:
        return None, 0.0
    seconds = 0.0
    if given is None:
        if config.prompts is None:
            raise ValueError(
                f"the {which}'s answers: give its generations, or prompts to generate them from"
            )
        given = str(Path(config.out).with_suffix(f".{which}.jsonl"))
        Path(given).unlink(missing_ok=True)
        settings = GenerateConfig(
            model=model,
            prompts=config.prompts,
            out=given,
            k=config.k,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            batch_size=config.batch_size,
            precision=config.precision,
            backend=config.backend,
        )
        policy = (
            load_model(model, cache=cache)
            if cache is not None and settings.backend != "vllm"
            else None
        )
        seconds = generate(settings, console=console, model=policy).seconds
    return load_records(given, require_scores=False, min_completions=1).records, seconds


def _on_prompts(config: EvalConfig, console: Console, cache: ModelCache | None) -> dict:
    answers, model_seconds = _answers(config, "model", console, cache)
    baseline, baseline_seconds = _answers(config, "baseline", console, cache)
    if baseline is not None and [a.prompt for a in answers] != [b.prompt for b in baseline]:
        raise DataError(
            "the baseline's answers are to other prompts than the model's (or in another order)"
        )
    oracle = make_oracle(config.oracle, config.oracle_options)
    cache = answer_cache(None)
    lists = lambda records: [
        ListToJudge(r.prompt, tuple(map(str, r.completions)), r.extra) for r in records
    ]
    result: dict[str, Any] = {
        "mode": "prompts",
        "model": config.model,
        "oracle": config.oracle,
        "prompts": len(answers),
        "answers_per_prompt": len(answers[0].completions),
    }
    boot = {"resamples": config.resamples, "seed": config.seed}
    judging = time.perf_counter()
    try:
        scored = judge(oracle, lists(answers), cache)[0]
        per_prompt: dict[str, list] = {"lengths": [_mean_length(a) for a in answers]}
        if oracle.absolute_scores:
            result["score"] = bootstrap_mean(
                [j.scores for j in scored if j.abstained is None], **boot
            ).to_json()
            per_prompt["scores"] = [
                None if j.abstained else float(np.mean(j.scores)) for j in scored
            ]
        result["abstained"] = sum(j.abstained is not None for j in scored)
        if baseline is not None:
            result["baseline"] = config.baseline or config.baseline_generations
            base_scored = (
                judge(oracle, lists(baseline), cache)[0] if oracle.absolute_scores else None
            )
            rate, preferences = _win_rate(
                oracle, answers, baseline, scored, base_scored, cache, boot
            )
            result["win_rate"] = rate.to_json()
            per_prompt |= {
                "preferences": preferences,
                "baseline_lengths": [_mean_length(b) for b in baseline],
            }
            if oracle.absolute_scores:
                result["baseline_score"] = bootstrap_mean(
                    [j.scores for j in base_scored if j.abstained is None], **boot
                ).to_json()
                per_prompt["baseline_scores"] = [
                    None if j.abstained else float(np.mean(j.scores)) for j in base_scored
                ]
        result["per_prompt"] = per_prompt
    finally:
        oracle.close()
        if cache is not None:
            cache.close()
    # where the time went: sampling answers and judging them (the rest is loading and bookkeeping)
    result["seconds"] = {
        "generate": model_seconds + baseline_seconds,
        "judge": time.perf_counter() - judging,
    }
    reference = config.reference or default_reference(config.model)
    if reference is not None:
        result["reference"] = reference
        result["kl"] = _kl(config, answers, reference, boot).to_json()
    return result


def _win_rate(oracle, answers, baseline, scored, theirs, cache, boot):
    """Per prompt: with an oracle of absolute scores, A's mean score against B's (`scored` and
    `theirs`, judged already); with a comparing one (a judge, people), A's first answer and B's
    first judged as a pair."""
    if oracle.absolute_scores:
        preferences = [
            None
            if a.abstained or b.abstained
            else float(np.sign(np.mean(a.scores) - np.mean(b.scores)) / 2 + 0.5)
            for a, b in zip(scored, theirs, strict=True)
        ]
    else:
        pairs = [
            ListToJudge(a.prompt, (str(a.completions[0]), str(b.completions[0])), a.extra)
            for a, b in zip(answers, baseline, strict=True)
        ]
        verdicts = judge(oracle, pairs, cache)[0]
        preferences = [
            None if v.abstained else float(np.sign(v.scores[0] - v.scores[1]) / 2 + 0.5)
            for v in verdicts
        ]
    rate = win_rate(
        preferences,
        lengths_a=[_mean_length(a) for a in answers],
        lengths_b=[_mean_length(b) for b in baseline],
        **boot,
    )
    return rate, preferences


def _mean_length(record: PreferenceRecord) -> float:
    """An answer's mean length in tokens (from generation), else in characters."""
    lengths = record.extra.get("meta", {}).get("lengths") or [
        len(str(c)) for c in record.completions
    ]
    return float(np.mean(lengths))


def _kl(config: EvalConfig, answers: list[PreferenceRecord], reference: str, boot: dict):
    """KL(policy ‖ reference) from the policy's own answers, both log-probs from the same tokens."""
    records = [
        PreferenceRecord(r.prompt, r.completions, (0.0,) * len(r.completions)) for r in answers
    ]
    policy, ref = (
        logps_table(spec, records, config.precision)[0] for spec in (config.model, reference)
    )
    k = [len(r.completions) for r in records]
    return kl_estimate(
        [policy[i, : k[i]].tolist() for i in range(len(records))],
        [ref[i, : k[i]].tolist() for i in range(len(records))],
        **boot,
    )


# ----- on preference data -----


def _on_data(config: EvalConfig) -> dict:
    records = load_records(config.data).records
    policy, lengths, examples = logps_table(config.model, records, config.precision)
    reference = config.reference or default_reference(config.model)
    ref = logps_table(reference, records, config.precision)[0] if reference is not None else None
    pairs = [
        (n, i, j)
        for n, e in enumerate(examples)
        for i in range(len(e.scores))
        for j in range(len(e.scores))
        if e.scores[i] > e.scores[j]
    ]
    if not pairs:
        raise DataError(f"{config.data}: no pair with a preference (every list ties)")
    n, better, worse = (np.array(column) for column in zip(*pairs, strict=True))
    s_w, s_l = policy[n, better].numpy(), policy[n, worse].numpy()
    len_w, len_l = lengths[n, better].numpy(), lengths[n, worse].numpy()
    boot = {"resamples": config.resamples, "seed": config.seed}
    per_list = lambda values: bootstrap_mean(
        [values[n == m] for m in sorted(set(n.tolist()))], **boot
    ).to_json()
    result: dict[str, Any] = {
        "mode": "data",
        "model": config.model,
        "data": config.data,
        "lists": len(examples),
        "pairs": len(pairs),
        "ranking_accuracy": per_list((s_w >= s_l).astype(float)),
        "ranking_accuracy_length_normalized": per_list((s_w / len_w >= s_l / len_l).astype(float)),
    }
    if ref is None:
        result["note"] = (
            "no reference: implicit rewards, idealized ranking accuracy and difficulty need one"
        )
        return result
    r_w, r_l = ref[n, better].numpy(), ref[n, worse].numpy()
    alpha = np.array([_alpha(config, records, examples, m) for m in n])
    ideal = idealized_log_ratio(r_w - r_l, alpha, config.beta) > 0
    c, threshold = difficulty(r_w, r_l, config.beta)
    dpo_loss = np.logaddexp(0.0, -config.beta * ((s_w - r_w) - (s_l - r_l)))
    misranked = s_w < s_l
    result |= {
        "reference": reference,
        "beta": config.beta,
        "reward_accuracy": per_list(((s_w - r_w) > (s_l - r_l)).astype(float)),
        "idealized_ranking_accuracy": float(ideal.mean()),
        "idealized_ranking_accuracy_length_normalized": float(
            (idealized_log_ratio(r_w / len_w - r_l / len_l, alpha, config.beta) > 0).mean()
        ),
        "reference_misranks": float((c > 0).mean()),
        "misranked_that_the_optimum_ranks_correctly": float(
            (misranked & ideal).sum() / max(misranked.sum(), 1)
        ),
        "loss_above_threshold": float((dpo_loss > threshold).mean()),
        "difficulty": [
            {
                "list": int(m),
                "better": int(i),
                "worse": int(j),
                "c": float(ci),
                "threshold": float(t),
                "dpo_loss": float(loss),
                "ranked_correctly": bool(not mis),
            }
            for (m, i, j), ci, t, loss, mis in zip(
                pairs, c, threshold, dpo_loss, misranked, strict=True
            )
        ],
    }
    return result


def _alpha(config: EvalConfig, records, examples, m: int) -> float:
    if config.alpha is not None:
        return config.alpha
    value = records[m].extra.get("alpha", 1.0)
    if not isinstance(value, int | float) or not 0.5 < value <= 1:
        raise DataError(
            f'"alpha" must be a number in (0.5, 1], got {value!r}', source=records[m].source
        )
    return float(value)


def logps_table(
    spec: str,
    records: list[PreferenceRecord],
    precision: str = "auto",
    cache: ModelCache | None = None,
):
    """Summed completion log-probs [lists, K] and lengths under one model, each list best first
    (in its own order when unscored), with the tokenized lists. `cache`: as load_model's."""
    tokenizer = load_tokenizer(spec)
    examples, _ = tokenize_records(
        records, tokenizer, TokenizeSettings(max_prompt_tokens=None, max_completion_tokens=None)
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, _ = choose_precision(precision, device)
    engine = CompletionLogpsModel(load_model(spec, cache=cache).to(device))
    autocast = lambda: torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    (table,), _, _ = reference_logps(
        engine,
        [examples],
        batching=Batching(),
        pad_id=tokenizer.pad_token_id,
        device=device,
        cache=None,
        adapters_off=None,
        autocast=autocast,
    )
    k_max = table.shape[1]
    lengths = torch.tensor(
        [
            [len(c) for c in e.completion_ids] + [1] * (k_max - len(e.completion_ids))
            for e in examples
        ],
        dtype=torch.float64,
    )
    return table.double().cpu(), lengths, examples


def default_reference(spec: str) -> str | None:
    """A train run's reference: the base of its LoRA adapters, or the model it started from."""
    path = Path(spec)
    for adapters in (path / "model" / "adapter_config.json", path / "adapter_config.json"):
        if adapters.exists():
            return json.loads(adapters.read_text())["base_model_name_or_path"]
    if (path / "config.yaml").exists():
        return yaml.safe_load((path / "config.yaml").read_text()).get("model")
    return None
