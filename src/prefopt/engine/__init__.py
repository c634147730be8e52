"""The engine: model loading (HF id or folder, GGUF, the default model), precision choice, the
log-prob engine and what makes it fast (segment attention, fused norm and LoRA sums, host memory
reuse) and the reference cache. It knows models, not training. Importing it is light: transformers
and peft load only when a model does."""

from prefopt.engine.settings import ALL_OFF, ENGINE_VERSION, AppliedEngine, EngineSettings

__all__ = ["ALL_OFF", "ENGINE_VERSION", "AppliedEngine", "EngineSettings"]
