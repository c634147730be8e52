"""A reward-model training run: the training loop of `prefopt train` (data, tokenization, LoRA,
precision, resume, metrics, checkpoints), with a scalar head in place of the LM head. One packed
row per list [prompt, c1, …, cK]; each completion's reward is read at its last token
(prefopt.engine.rewards). The model is saved as a transformers sequence-classification folder
that `AutoModelForSequenceClassification.from_pretrained` loads alone."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from rich.console import Console

from prefopt.engine.model import LoraSettings, ModelCache, load_reward_model
from prefopt.engine.rewards import RewardEngine
from prefopt.engine.settings import EngineSettings
from prefopt.evaluate.stats import calibration
from prefopt.reward.config import RewardConfig
from prefopt.train import Task, TrainResult, train


class RewardTask(Task):
    """A reward model: a scalar head in place of the LM head, rewards read at completions' last tokens."""

    command = "prefopt reward train"

    summarizes = True

    def __init__(self, calibration_bins: int):
        self.calibration_bins = calibration_bins

    def build(
        self,
        config: RewardConfig,
        *,
        lora: LoraSettings | None,
        engine: EngineSettings,
        objective,
        tokenizer,
        cache: ModelCache | None,
    ) -> RewardEngine:
        model = load_reward_model(
            config.model,
            lora=lora,
            gradient_checkpointing=config.gradient_checkpointing,
            engine=engine,
            pad_token_id=tokenizer.pad_token_id,
            new_head=True,
            cache=cache,
        )
        return RewardEngine(model, engine)

    def save(
        self,
        model,
        *,
        tokenizer,
        out: Path,
        config: RewardConfig,
        lora: bool,
        cache: ModelCache | None,
    ) -> str:
        """output_dir/model: the whole reward model (LoRA merged into it); with LoRA also
        output_dir/adapters (the adapters and the trained head, for peft)."""
        note = ""
        # the run's own may be shared with later runs (a Reuse)
        tokenizer = copy.deepcopy(tokenizer)
        distinct_pad(tokenizer, model.get_base_model() if lora else model)
        if lora:
            model.save_pretrained(out / "adapters")
            tokenizer.save_pretrained(out / "adapters")
            model = model.merge_and_unload()
            note = f" (adapters in {out / 'adapters'})"
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        return f"saved the reward model to {out / 'model'}{note}"

    def summarize(self, batches: list[tuple]) -> dict:
        return summarize(batches, bins=self.calibration_bins)


def distinct_pad(tokenizer, model) -> None:
    """transformers' own forward reads a reward at the last token that is not the pad token. When
    the pad token is the EOS that ends a completion (SmolLM2's is), it would read one token early:
    the saved model pads with the unknown token instead, where there is one."""
    if tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.unk_token_id not in (
        None,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    ):
        tokenizer.pad_token = tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id


def summarize(batches: list[tuple], bins: int = 10) -> dict:
    """Metrics over the whole evaluation set: calibration of σ(r_w − r_l) on every labelled pair
    (a reliability table and its ECE), and the rewards' mean, spread and mean by rank (rank 1 is
    the best; tied completions share a rank)."""
    margins, rewards_all, by_rank = [], [], {}
    for out, collated in batches:
        rewards = out.metrics["rewards"].cpu().numpy()
        scores, mask = collated.scores.cpu().numpy(), collated.mask.cpu().numpy()
        for r, s, m in zip(rewards, scores, mask, strict=True):
            r, s = r[m], s[m]
            better = s[:, None] > s[None, :]
            margins.append((r[:, None] - r[None, :])[better])
            rewards_all.append(r)
            for reward, rank in zip(r, 1 + (s[None, :] > s[:, None]).sum(1), strict=True):
                by_rank.setdefault(int(rank), []).append(float(reward))
    if not rewards_all:
        return {}
    values = np.concatenate(rewards_all)
    table = calibration(np.concatenate(margins), bins) if sum(map(len, margins)) else None
    return {
        "calibration_ece": table["ece"] if table else float("nan"),
        "reward_mean": float(values.mean()),
        "reward_std": float(values.std()),
        "reward_by_rank": {str(rank): float(np.mean(by_rank[rank])) for rank in sorted(by_rank)},
        **({"calibration": table} if table else {}),
    }


def reward_task(config: RewardConfig) -> RewardTask:
    return RewardTask(config.calibration_bins)


def reward_train(
    config: RewardConfig,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_step=None,
    on_eval=None,
) -> TrainResult:
    """Train a reward model as `config` says (resumable from its last checkpoint, as `prefopt train`)."""
    return train(
        config,
        resume=resume,
        console=console,
        on_step=on_step,
        objective=config.build_objective(),
        task=reward_task(config),
        on_eval=on_eval,
    )
