"""What a run trains: a policy by default (`POLICY`); `prefopt reward train` passes a reward
model's Task."""

from __future__ import annotations

from pathlib import Path

import torch

from prefopt.engine.logps import CompletionLogpsModel
from prefopt.engine.model import LoraSettings, ModelCache, load_model
from prefopt.engine.settings import EngineSettings
from prefopt.losses import Objective
from prefopt.train.config import RunSettings


class Task:
    """What a run trains, the rest of the run being the same: a policy by default (`POLICY`);
    `prefopt reward train` trains a reward model."""

    command = "prefopt train"  # the command that trains it, as a model card says

    def build(
        self,
        config: RunSettings,
        *,
        lora: LoraSettings | None,
        engine: EngineSettings,
        objective: Objective,
        tokenizer,
        cache: ModelCache | None,
    ) -> torch.nn.Module:
        """The model (through `cache`, when given) in the engine module whose forward gives
        per-completion values [B, K]: log-probs of a policy, or rewards of a reward model."""
        model = load_model(
            config.model,
            lora=lora,
            gradient_checkpointing=config.gradient_checkpointing,
            engine=engine,
            cache=cache,
        )
        needs = objective.needs
        return CompletionLogpsModel(
            model,
            engine,
            with_tokens="tokens" in needs,
            with_sampling_weights="sampling_weights" in needs,
            with_prompt="prompt" in needs,
        )

    def save(
        self,
        model,
        *,
        tokenizer,
        out: Path,
        config: RunSettings,
        lora: bool,
        cache: ModelCache | None,
    ) -> str:
        """Write the final model; say where. With a `cache`, the saved model is kept in it too."""
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        if cache is not None and not lora:
            cache.keep_saved(out / "model", model, config.model)
        if not (config.merge and lora):
            return f"saved the model to {out / 'model'}"
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        if cache is not None:
            cache.keep_saved(out / "merged", merged, config.model)
        return f"saved the model to {out / 'model'} and {out / 'merged'}"

    summarizes = False  # whether `summarize` reads the evaluation's batches (they are kept for it)

    def summarize(self, batches: list[tuple]) -> dict[str, float]:
        """Metrics over the whole evaluation set, from each batch's (loss output, collated batch)."""
        return {}


POLICY = Task()
