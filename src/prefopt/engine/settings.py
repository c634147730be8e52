"""The engine's switches in one place: what `load_model` applies to a model and what the log-prob
engine does per call. Tests and benchmarks set them here instead of patching module constants."""

from __future__ import annotations

import dataclasses
from typing import Literal

# part of the reference cache's key: raised whenever a change to the engine can change a list's
# log-probs in the last bits (entries of older engines would give non-zero step-0 rewards).
# Its history is in CHANGELOG.md.
ENGINE_VERSION = 9


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """Each switch changes speed or memory, never a number beyond float rounding (tested: every
    optimization on equals all off)."""

    # packed rows attend only within their blocks (prefopt.engine.attention)
    segment_attention: bool = True
    # bf16 matmul attention on CPUs: auto = where it is faster (bf16 autocast on a CPU with bf16
    # instructions but no AMX tiles), on = every call that is large enough, off = PyTorch's fused kernel always
    matmul_attention: Literal["auto", "on", "off"] = "auto"
    # calls of at least this many queries and keys take the matmuls: below, the fused kernel's one call
    # costs less than the matmuls' ~25 small ops (docs/performance.md has the measurements)
    matmul_min_queries: int = 80
    matmul_min_keys: int = 128
    # keys up to which the matmul backward reuses the forward's bf16 probabilities (H × keys numbers a
    # query, bounded per token) instead of recomputing them
    keep_probabilities_up_to: int = 512
    # RMSNorms that feed linear layers as one autograd function (prefopt.engine.norm)
    fused_norm: bool = True
    # gated MLPs' silu(g) · u as one autograd function (prefopt.engine.swiglu)
    fused_swiglu: bool = True
    fused_lora: bool = True  # LoRA's adapter sum inside the base GEMM (prefopt.engine.lora)
    # a LoRA MLP's three linears and SwiGLU as one autograd function (prefopt.engine.swiglu); its
    # backward sums the input gradient's products inside one GEMM, so it rounds differently
    fused_lora_mlp: bool = True
    # a LoRA run under bf16 autocast holds its frozen base weights in bf16 (prefopt.engine.frozen)
    frozen_in_bf16: bool = True
    # a reward model's last decoder layer computes its output projection and MLP only at the tokens read as
    # rewards (prefopt.engine.rewards)
    last_layer_at_rewards: bool = True
    # completion tokens per LM-head chunk (the logits of one chunk exist at a time)
    chunk_tokens: int = 1024
    # torch.compile each decoder layer (prefopt.engine.compiled): fused elementwise ops and fewer tensors kept for
    # the backward, for a compilation at the first step; rounds differently from eager in the last bits
    compile: bool = False

    def __post_init__(self) -> None:
        if self.matmul_attention not in ("auto", "on", "off"):
            raise ValueError(
                f"matmul_attention must be auto, on or off, got {self.matmul_attention!r}"
            )
        for name in ("matmul_min_queries", "matmul_min_keys", "keep_probabilities_up_to"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")


ALL_OFF = EngineSettings(
    segment_attention=False,
    matmul_attention="off",
    fused_norm=False,
    fused_swiglu=False,
    fused_lora=False,
    fused_lora_mlp=False,
    frozen_in_bf16=False,
    last_layer_at_rewards=False,
)


@dataclasses.dataclass(frozen=True)
class AppliedEngine:
    """What `load_model` switched on a model (a switch can be asked for and not apply: another
    attention kernel chosen on purpose, a model type whose norms are not pre-norm)."""

    settings: EngineSettings
    segment_attention: bool
    fused_norms: int
    fused_lora_layers: int
    compiled_layers: int = 0
    fused_mlps: int = 0
    last_layer_at_rewards: bool = False

    def describe(self) -> str:
        return (
            f"segment attention {'on' if self.segment_attention else 'off'}, matmul attention "
            f"{self.settings.matmul_attention}, {self.fused_norms} fused norms, {self.fused_mlps} fused MLPs, "
            f"{self.fused_lora_layers} fused LoRA layers, {self.compiled_layers} compiled layers"
            + (", last layer at the rewards only" if self.last_layer_at_rewards else "")
        )
