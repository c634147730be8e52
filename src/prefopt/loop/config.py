"""The settings of `prefopt loop`, typed, defaulted and documented once (docs/settings.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefopt.acquire.strategies import ACQUISITIONS
from prefopt.losses import Objective
from prefopt.oracles import ORACLES
from prefopt.oracles.base import make_options
from prefopt.registry import registered
from prefopt.settings import build
from prefopt.train import TrainConfig


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        "default", description="The initial policy: HF id or folder, .gguf or `default`."
    )
    prompts: str = Field(
        ...,
        description="The prompt pool: any file `prefopt train` reads; prompts are drawn "
        "from it, each used once.",
    )
    heldout: str | None = Field(
        None, description="Held-out prompts to evaluate every round on (never trained on)."
    )
    oracle: Annotated[str, registered(ORACLES)] = Field(
        "verifier", description="Labels the chosen lists: verifier, reward_model, judge, people."
    )
    oracle_options: dict[str, Any] = Field(
        default_factory=dict, description="The oracle's options."
    )
    eval_oracle: Annotated[str, registered(ORACLES)] | None = Field(
        None,
        description="The oracle that measures the held-out answers (default: the labelling oracle; e.g. "
        "label with people, measure with a verifier).",
    )
    eval_oracle_options: dict[str, Any] | None = Field(
        None,
        description="Its options (default: the labelling oracle's, when it is the same oracle).",
    )
    rounds: int = Field(
        3, ge=1, description="Rounds of generate → acquire → label → train → evaluate."
    )
    labels_per_round: int = Field(16, ge=1, description="Lists labelled per round (the budget).")
    candidates_per_label: int = Field(
        4,
        ge=1,
        description="Candidate prompts drawn per label wanted "
        "(over-sampling: acquisition chooses among them).",
    )
    k: int = Field(4, ge=2, description="Completions generated per prompt (a list).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the policy.")
    max_new_tokens: int = Field(64, ge=1, description="Longest completion.")
    acquisition: Annotated[str, registered(ACQUISITIONS)] = Field(
        "entropy",
        description="How lists are chosen (certainty falls back to entropy while the policy is its "
        "reference).",
    )
    selection: Literal["top", "softmax", "power", "softrank"] = Field(
        "top", description="Top-k, or a stochastic batch rule."
    )
    selection_beta: float = Field(1.0, ge=0, description="Coldness of a stochastic rule.")
    oversample: int = Field(
        4,
        ge=1,
        description="hybrid: entropy keeps this many times the budget for "
        "certainty to choose from.",
    )
    training: Literal["restart", "continue"] = Field(
        "restart",
        description="restart: train the initial model on all data so far, reference the initial model "
        "(Muldrew et al.); continue: train the last round's policy on the new data, "
        "reference the last round's policy (DNO's practical recipe).",
    )
    regenerate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="OPTune (Chen et al. 2024): from round 2 on, "
        "the candidates are the lists the round before labelled, and only this fraction "
        "of them, those the oracle scored lowest, is sampled again; the others keep "
        "their answers.",
    )
    pair_rule: Literal["list", "best_worst"] = Field(
        "list",
        description="list: train on each labelled list as ranked; best_worst: each list becomes the pair "
        "(its best, its worst), DNO-Prct's rule (Rosset et al. 2024).",
    )
    pair_margin: float = Field(
        0.0,
        ge=0,
        description="best_worst: keep a pair only if its score gap (rank gap for "
        "people) is at least this (DNO's large-margin filter).",
    )
    train: dict[str, Any] = Field(
        default_factory=lambda: {
            "loss": {"plackett_luce": 1.0, "sft": 0.2},
            "lora": True,
            "learning_rate": 2e-4,
            "epochs": 2,
        },
        description="Settings of `prefopt train` for every round's training.",
    )
    eval_k: int = Field(1, ge=1, description="Answers per held-out prompt at evaluation.")
    eval_temperature: float = Field(
        0.0,
        ge=0,
        description="Temperature of the held-out answers (0: greedy, the "
        "model's most likely answer, as IFEval reads a model).",
    )
    output_dir: str = Field(
        "runs/loop", description="Where every round's stages, rounds.jsonl and the models go."
    )
    backend: Literal["prefopt", "transformers", "vllm"] = Field(
        "prefopt", description="What samples each round's lists and the held-out answers, as in "
        "`prefopt generate` (vllm: GPU machines; each round's policy is read from its folder).",
    )  # fmt: skip
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list,
        description="Experiment trackers (as in `prefopt train`): the loop's rounds.jsonl lines "
        "as one run named after output_dir, every round's training as a run `round-N`, grouped "
        "by output_dir's name.",
    )
    seed: int = Field(0, description="Seeds the prompt draws, sampling, acquisition and training.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="As in `prefopt train`.")

    @model_validator(mode="after")
    def _oracle_options_build(self):
        """The oracles' options are checked now, not after a round's sampling."""
        make_options(self.oracle, self.oracle_options)
        if self.eval_oracle is not None and self.eval_oracle_options is not None:
            make_options(self.eval_oracle, self.eval_oracle_options)
        return self

    @model_validator(mode="after")
    def _train_settings_build(self):
        if self.pair_margin and self.pair_rule != "best_worst":
            raise ValueError("pair_margin filters the pairs of pair_rule: best_worst; set that too")
        owned = {
            "model",
            "data",
            "output_dir",
            "eval_data",
            "seed",
            "precision",
            "anchor_model",
            "report_to",
            "report_group",
            "run_name",
        } & set(self.train)
        if owned:
            raise ValueError(f"train: {', '.join(sorted(owned))} are set by the loop itself")
        # unknown settings fail here
        if self._reads_an_anchor() and self.training != "continue":
            raise ValueError(
                "train: this loss reads the previous round's policy as its reference and the initial "
                "model as a second one (inpo): set training: continue"
            )
        return self

    def _objective(self) -> Objective:
        """The objective every round trains (unknown settings of `train` fail here, at load)."""
        settings = build(
            TrainConfig, {"data": "x", "anchor_model": self.model, **self.train}, "loop train"
        )
        return settings.build_objective()

    def _reads_an_anchor(self) -> bool:
        return "anchor" in self._objective().needs

    def implicit_reward_beta(self) -> float:
        """β of the implicit reward the rounds train (certainty acquisition reads it)."""
        return self._objective().beta

    def train_settings(self) -> dict[str, Any]:
        """The round's `prefopt train` settings the loop adds to `train` (the anchor, where a loss reads one)."""
        return {"anchor_model": self.model} if self._reads_an_anchor() else {}
