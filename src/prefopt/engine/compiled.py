"""torch.compile for a training run's decoder layers.

Each decoder layer is compiled with dynamic shapes (one graph for every row length and batch size,
shared by all layers of a model), and the segment attention stays eager: its per-row calls are a
Python loop over the batch's layout, which would otherwise be traced anew for every layout. What
compiling buys is the fusion of everything between the GEMMs (RoPE, SwiGLU, the residual sums, the
casts of autocast), and a backward that recomputes those cheap elementwise results instead of
keeping them: faster steps and a lower peak (docs/performance.md). The price is the compilation
itself, at the first training step and again at the first evaluation (inference is another
graph), less when inductor's on-disk cache holds the kernels; so it pays off for runs of minutes,
not for a handful of steps."""

from __future__ import annotations

import shutil

import torch

RECOMPILE_LIMIT = 64


def compile_decoder_layers(model) -> int:
    """Compile every decoder layer of `model` (a transformers model, PEFT-wrapped or not) in place;
    returns how many. The layers are the model's own `_no_split_modules` blocks."""
    _check_compiler()
    # a layer compiles a few variants: training and inference, the first layer's input without grad
    # (frozen embeddings) and the others' with, transformers' wrappers called with and without self;
    # past dynamo's default of 8 a frame would fall back to eager for good
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
    )
    # dynamo gives sizes that happen to be equal one symbol ("duck sizing"): a first batch of 3 rows
    # with K = 2 (a layout of width 1 + K = 3) would tie the batch size to K, and the first batch
    # where they differ (the epoch's last, a list of another K) would compile every graph again
    torch.fx.experimental._config.use_duck_shape = False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(base, "_no_split_modules", None) or ())
    layers = [module for module in base.modules() if type(module).__name__ in blocks]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _check_compiler() -> None:
    """On a CPU, inductor writes its kernels in C++: without a compiler the first step would fail
    deep inside torch."""
    if torch.cuda.is_available():
        return
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        raise ValueError(
            "compile: true needs a C++ compiler on a CPU (torch.compile writes its kernels in C++): "
            "install g++ (Debian: apt install g++) or set compile: false"
        )
