"""The settings of `prefopt rl`, typed, defaulted and documented once (docs/settings.md). Settings
that mean what `prefopt train`'s mean carry its names."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefopt.losses import LOSSES, Objective
from prefopt.oracles import ORACLES
from prefopt.oracles.base import make_options
from prefopt.registry import registered

OracleName = Annotated[str, registered(ORACLES)]
RL_OBJECTIVES = tuple(name for name in LOSSES if LOSSES[name].info.family == "rl")


class RLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        "default", description="The initial policy: HF id or folder, .gguf or `default`."
    )
    prompts: str = Field(..., description="The prompts: any file `prefopt train` reads; each step draws "
                         "from them (epochs over the pool, shuffled by the seed).")  # fmt: skip
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list, description="As in `prefopt train`: experiment trackers."
    )
    run_name: str | None = Field(
        None, description="The run's name in the trackers (default: the output folder's name)."
    )
    output_dir: str = Field(
        "runs/rl", description="Where metrics.jsonl, checkpoints and the model go."
    )
    heldout: str | None = Field(
        None,
        description="Held-out prompts: answered greedily and scored by "
        "the oracle every eval_every steps and at the end (never trained on).",
    )
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate on heldout every N steps (and at the end; with heldout)."
    )
    oracle: OracleName | list[OracleName] = Field(
        "verifier", description="Scores every sampled answer: verifier, reward_model or judge; "
        "or a list of them, whose weighted scores add up (docs/rl.md).",
    )  # fmt: skip
    oracle_options: dict[str, Any] | list[dict[str, Any]] = Field(
        default_factory=dict, description="The oracle's options (a list of them with a list of "
        "oracles, in the same order).",
    )  # fmt: skip
    oracle_weights: list[float] | None = Field(
        None, description="With several oracles, each one's weight in the reward (default 1 each)."
    )
    objective: Annotated[str, registered(LOSSES)] = Field(
        "grpo", description=f"The group RL objective: {', '.join(RL_OBJECTIVES)} (docs/losses.md)."
    )
    loss_params: dict[str, Any] = Field(
        default_factory=dict, description="The objective's parameters, e.g. {epsilon_high: 0.28}."
    )
    k: int = Field(4, ge=2, description="Answers sampled per prompt (a group).")
    prompts_per_step: int = Field(16, ge=1, description="Groups in a step.")
    max_new_tokens: int = Field(64, ge=1, description="Longest answer, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    dynamic_sampling: bool = Field(
        True, description="DAPO (Yu et al. 2025): groups whose answers all score the same carry no "
        "gradient; drop them and draw more prompts until the step has prompts_per_step groups "
        "(at most max_draws draws, counted in the metrics).",
    )  # fmt: skip
    max_draws: int = Field(3, ge=1, description="Draws of prompts a step may make.")
    mask_truncated: bool = Field(
        False, description="Answers cut at max_new_tokens leave the loss (DAPO's overlong filter)."
    )
    num_iterations: int = Field(1, ge=1, description="Passes over each step's samples (μ).")
    minibatches: int = Field(
        1, ge=1, description="Each pass splits the step's groups into this many minibatches, one "
        "optimizer step each (their losses normalized within the minibatch).",
    )  # fmt: skip
    max_tokens_per_forward: int | None = Field(
        1024, ge=1, description="Train a minibatch in forward passes of about this many tokens "
        "(a group's prompt once and its answers; a group larger than this alone), their "
        "gradients added into the minibatch's one optimizer step: the same update in less "
        "memory, and on a CPU no slower than one pass (None: one pass). DisCO after an update "
        "(num_iterations or minibatches above 1) trains each minibatch in one pass: its trust "
        "region is a mean over the whole minibatch of what the pass computes.",
    )  # fmt: skip
    max_steps: int = Field(50, ge=1, description="Steps: sample, score, train.")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm (None: off)."
    )
    lora: bool = Field(
        True, description="Train LoRA adapters (the policy samples with them, live)."
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"],
        description="Module names that get adapters.",
    )  # fmt: skip
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="As in `prefopt train`.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, more compute)."
    )
    backend: Literal["prefopt", "vllm"] = Field(
        "prefopt", description="What samples: prefopt's shared-prefill sampler, or vLLM on GPU "
        "machines (`pip install vllm`; one engine beside training, the policy's weights pushed "
        "into it after each update).",
    )  # fmt: skip
    vllm_importance_sampling: Literal[
        "token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "none"
    ] = Field(
        "sequence_mask", description="With backend vllm: how the policy gradient is corrected "
        "for vLLM's log-probs not being the trainer's (TRL's vllm_importance_sampling_mode; "
        "none: no correction).",
    )  # fmt: skip
    vllm_importance_sampling_clip_max: float | None = Field(
        3.0, gt=0, description="The importance weight's upper bound (truncated) or cut (masked)."
    )
    vllm_importance_sampling_clip_min: float | None = Field(
        None, ge=0, description="The importance weight's lower bound or cut (None: none)."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="The share of the GPU's memory vLLM may take (training "
        "keeps the rest).",
    )  # fmt: skip
    max_prompt_tokens: int | None = Field(512, ge=1, description="Longer prompts keep their end.")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="As in `prefopt train`: how prompts are rendered."
    )
    seed: int = Field(0, description="Seeds the prompt order, the samples and LoRA's init.")
    log_every: int = Field(1, ge=1, description="Write metrics every N steps.")
    save_every: int | None = Field(
        10, ge=1, description="Checkpoint every N steps (resume reads it)."
    )

    @model_validator(mode="after")
    def _names_and_options_check(self):
        if "people" in self.oracle_names:
            raise ValueError(
                "oracle: people cannot answer within a step; label with people in rounds with "
                "`prefopt loop`"
            )
        if self.minibatches > self.prompts_per_step:
            raise ValueError(f"minibatches: {self.minibatches} is more than prompts_per_step "
                             f"({self.prompts_per_step}); each minibatch needs a group")  # fmt: skip
        if self.objective not in RL_OBJECTIVES:
            raise ValueError(
                f"objective: {self.objective} is not a group RL objective; valid: "
                f"{', '.join(RL_OBJECTIVES)}"
            )
        if (
            self.backend == "vllm"
            and self.objective == "disco"
            and (self.vllm_importance_sampling != "none")
        ):
            raise ValueError("objective: disco has no per-token ratio to correct vLLM's samples "
                             "by; set vllm_importance_sampling: none to train it on them as they "
                             "are, or use backend prefopt")  # fmt: skip
        self.oracle_specs()  # options checked, lengths matched
        self.build_objective()  # unknown or bad parameters fail here
        return self

    def build_objective(self) -> Objective:
        params = dict(self.loss_params)
        if params.get("aggregation") == "constant":  # Dr. GRPO's constant: the generation budget
            params.setdefault("max_completion_length", self.max_new_tokens)  # (as TRL's dr_grpo)
        return Objective(self.objective, {self.objective: params})

    @property
    def forward_tokens(self) -> int | None:
        """max_tokens_per_forward where the objective allows a minibatch to be split; None: one
        pass (DisCO's trust region after an update is a mean over the whole minibatch of the
        policy's log-probs, known only after every pass)."""
        moved = self.num_iterations > 1 or self.minibatches > 1
        return None if self.objective == "disco" and moved else self.max_tokens_per_forward

    @property
    def oracle_names(self) -> list[str]:
        return [self.oracle] if isinstance(self.oracle, str) else list(self.oracle)

    def oracle_specs(self) -> list[tuple[str, dict, float]]:
        """(name, options, weight) of each oracle, the options checked."""
        names = self.oracle_names
        options = self.oracle_options
        if isinstance(options, dict):
            if len(names) > 1 and options:
                raise ValueError("oracle_options: with several oracles, give a list of options, "
                                 "one per oracle in the same order")  # fmt: skip
            options = [options] * len(names)
        weights = self.oracle_weights or [1.0] * len(names)
        for field, values in (("oracle_options", options), ("oracle_weights", weights)):
            if len(values) != len(names):
                raise ValueError(f"{field}: {len(values)} given for {len(names)} oracles")
        for name, given in zip(names, options, strict=True):
            make_options(name, given)
        return list(zip(names, options, weights, strict=True))
