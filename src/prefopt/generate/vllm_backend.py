"""Sampling through vLLM on GPU machines (`backend: vllm`; `pip install vllm`): in `prefopt
generate` and the loop (an engine per call, reading the model's folder) and in `prefopt rl` (one
engine colocated with training, the policy's weights pushed into it after each update, as TRL's
`vllm_mode="colocate"` does). The same samples and metadata as prefopt's sampler: K completions
per prompt (SamplingParams.n), seeded, with the log-prob of each sampled token (vLLM's raw
log-probs: the model's distribution before temperature and nucleus). The test suite runs this
module against a stand-in for vLLM that records what it is handed (vLLM needs a GPU)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from prefopt.engine.model import resolve_model_path
from prefopt.generate.sampling import Sample, SamplingSettings


def _vllm():
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        raise ValueError(
            "backend vllm needs the vllm package, which runs on GPU machines: pip install vllm "
            "(or use backend prefopt)"
        ) from None
    return LLM, SamplingParams, TokensPrompt


class VllmSampler:
    """A vLLM engine for one model."""

    def __init__(self, model: str, precision: str, seed: int,
                 gpu_memory_utilization: float | None = None):  # fmt: skip
        llm_class, _, _ = _vllm()
        options = {"model": resolve_model_path(model), "seed": seed,
                   "dtype": "bfloat16" if precision == "bf16" else "auto"}  # fmt: skip
        if gpu_memory_utilization is not None:  # colocated: training keeps the rest of the GPU
            options["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = llm_class(**options)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The policy's current weights, under their transformers names, into the engine; its
        prefix cache emptied (its keys and values were the old weights')."""
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        model.load_weights(weights)
        self.llm.reset_prefix_cache()

    def sample(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Sample]]:
        _, sampling_params, tokens_prompt = _vllm()
        params = sampling_params(
            n=settings.k,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k or -1,
            max_tokens=settings.max_new_tokens,
            min_tokens=settings.min_new_tokens,
            stop=list(settings.stop),
            seed=settings.seed,
            logprobs=0,  # the sampled token's own
        )
        outputs = self.llm.generate(
            [tokens_prompt(prompt_token_ids=ids) for ids in prompts], params
        )
        return [[_sample(completion) for completion in output.outputs] for output in outputs]


def _sample(completion) -> Sample:
    if completion.finish_reason == "length":
        finished = "length"
    else:  # "stop": an end-of-sequence token (stop_reason None or a token id) or a stop string
        finished = "stop" if isinstance(completion.stop_reason, str) else "eos"
    token_logps = tuple(
        float(position[token].logprob)
        for token, position in zip(completion.token_ids, completion.logprobs, strict=True)
    )
    return Sample(text=completion.text, token_ids=tuple(completion.token_ids),
                  logp=completion.cumulative_logprob, finished=finished,
                  token_logps=token_logps)  # fmt: skip


def sample_with_vllm(
    model: str, prompts: list[list[int]], settings: SamplingSettings, precision: str
) -> list[list[Sample]]:
    """`prompts` answered by a vLLM engine of `model` (a folder or hub id), made for this call."""
    return VllmSampler(model, precision, settings.seed).sample(prompts, settings)
