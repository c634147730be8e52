"""The settings of `prefopt generate`, typed, defaulted and documented once (docs/settings.md is
generated from them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefopt.data import TokenizeSettings
from prefopt.generate.sampling import SamplingSettings


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        "default",
        description="HF id or folder, a .gguf file, `default`, or a `prefopt train` "
        "output folder (LoRA adapters are merged into their base).",
    )
    prompts: str = Field(
        ...,
        description="Any file `prefopt train` reads: prompt-only records {prompt} or "
        "preference data (its distinct prompts).",
    )
    out: str = Field(
        "generations.jsonl", description="JSON Lines, one line per prompt, written as it goes."
    )
    k: int = Field(4, ge=1, description="Completions per prompt.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Nucleus sampling: keep the smallest set of tokens with this much probability.",
    )
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: all).")
    max_new_tokens: int = Field(128, ge=1, description="Longest completion, in tokens.")
    stop: list[str] = Field(
        default_factory=list,
        description="A completion ends before the first of these strings (one string, or a list).",
    )
    seed: int = Field(
        0,
        description="Completion k of a prompt is reproducible from (seed, prompt, k), alone or in "
        "any batch.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Prompts decoded together (K sequences each); prompts are batched by length. "
        "A decode step costs less a sequence the more it holds (docs/performance.md).",
    )
    backend: Literal["prefopt", "transformers", "vllm"] = Field(
        "prefopt",
        description="prefopt: one prefill per prompt shared by its K samples; transformers: "
        "generate(num_return_sequences=K); vllm: the vllm package (GPU machines).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="As in `prefopt train`.")
    max_prompt_tokens: int | None = Field(512, ge=1, description="Longer prompts keep their end.")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="As in `prefopt train`: how prompts are rendered."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value):
        return [value] if isinstance(value, str) else value

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            k=self.k,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(self.stop),
            seed=self.seed,
            batch_size=self.batch_size,
        )

    def tokenize_settings(self) -> TokenizeSettings:
        return TokenizeSettings(
            max_prompt_tokens=self.max_prompt_tokens, chat_template=self.chat_template
        )
