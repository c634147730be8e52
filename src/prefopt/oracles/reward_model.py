"""The reward-model oracle: any transformers sequence-classification folder with one output (a
Bradley–Terry reward model: `prefopt reward train`'s, TRL's, or one from the Hub) scores every
completion. A list is one packed row [prompt, c1, …, cK] with prefopt's segment attention, as in
training: the prompt is encoded once, and each completion's reward is read at its last token."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from prefopt.data import PreferenceRecord, TokenizeSettings
from prefopt.data.tokenize import tokenize_record
from prefopt.engine.model import load_reward_model, load_tokenizer
from prefopt.engine.precision import choose_precision
from prefopt.engine.refcache import weights_fingerprint
from prefopt.engine.rewards import completion_rewards
from prefopt.oracles.base import ORACLES, Judgement, ListToJudge, Oracle, OracleOptions


class RewardModelOptions(OracleOptions):
    model: str  # a sequence-classification folder (num_labels = 1)
    batch_size: int = 8  # lists per forward
    max_prompt_tokens: int | None = 1024
    max_completion_tokens: int | None = 1024
    chat_template: Literal["auto", "always", "never"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"


@ORACLES.register("reward_model")
class RewardModelOracle(Oracle):
    name: ClassVar[str] = "reward_model"
    Options: ClassVar[type[OracleOptions]] = RewardModelOptions

    def __init__(self, options: RewardModelOptions):
        super().__init__(options)
        self.tokenizer = load_tokenizer(options.model)
        self.model = load_reward_model(options.model).eval()
        self.precision, _ = choose_precision(options.precision, self.model.device)
        self.fingerprint = weights_fingerprint(self.model)
        self.settings = TokenizeSettings(
            options.max_prompt_tokens,
            options.max_completion_tokens,
            chat_template=options.chat_template,
        )

    def identity(self) -> dict:
        return {**super().identity(), "weights": self.fingerprint}

    def judge(self, lists: list[ListToJudge]) -> list[Judgement]:
        examples = [
            tokenize_record(
                PreferenceRecord(item.prompt, item.completions, (0.0,) * len(item.completions)),
                self.tokenizer,
                self.settings,
            )
            for item in lists
        ]
        judgements = []
        for start in range(0, len(examples), self.options.batch_size):
            batch = examples[start : start + self.options.batch_size]
            with (
                torch.inference_mode(),
                torch.autocast(
                    self.model.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
                ),
            ):
                rewards = completion_rewards(self.model, batch, self.tokenizer.pad_token_id)
            judgements += [
                Judgement(scores=tuple(row[: len(e.completion_ids)].tolist()))
                for row, e in zip(rewards, batch, strict=True)
            ]
        return judgements

    def close(self) -> None:
        self.model = None
