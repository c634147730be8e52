"""`prefopt generate`: K samples per prompt with one shared prefill (prefopt.engine.decode), seeded
per completion, written as it goes and resumable. `sample` is the in-process call for a model
already in memory."""

from prefopt.generate.config import GenerateConfig
from prefopt.generate.run import GenerateResult, generate, load_prompts
from prefopt.generate.sampling import Sample, SamplingSettings, sample

__all__ = [
    "GenerateConfig",
    "GenerateResult",
    "Sample",
    "SamplingSettings",
    "generate",
    "load_prompts",
    "sample",
]
