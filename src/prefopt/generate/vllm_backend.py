"""Sampling through vLLM on GPU machines (`backend: vllm`; `pip install vllm`). The same samples
and metadata as prefopt's sampler: K completions per prompt (SamplingParams.n), seeded, with the
log-prob of the sampled tokens. Not exercised by the test suite (it needs a GPU)."""

from __future__ import annotations

from prefopt.engine.model import resolve_model_path
from prefopt.generate.sampling import Sample, SamplingSettings


def sample_with_vllm(
    model: str, prompts: list[list[int]], settings: SamplingSettings, precision: str
) -> list[list[Sample]]:
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        raise ValueError(
            "backend vllm needs the vllm package, which runs on GPU machines: pip install vllm "
            "(or use backend prefopt)"
        ) from None
    llm = LLM(
        model=resolve_model_path(model),
        seed=settings.seed,
        dtype="bfloat16" if precision == "bf16" else "auto",
    )
    params = SamplingParams(
        n=settings.k,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k or -1,
        max_tokens=settings.max_new_tokens,
        stop=list(settings.stop),
        seed=settings.seed,
        logprobs=0,
    )
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params)
    results = []
    for output in outputs:
        samples = []
        for completion in output.outputs:
            if completion.finish_reason == "length":
                finished = "length"
            else:  # "stop": an end-of-sequence token (stop_reason None or a token id) or a stop string
                finished = "stop" if isinstance(completion.stop_reason, str) else "eos"
            samples.append(
                Sample(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    logp=completion.cumulative_logprob,
                    finished=finished,
                )
            )
        results.append(samples)
    return results
