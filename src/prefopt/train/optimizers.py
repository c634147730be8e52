"""The optimizers and learning-rate schedules a run can use, from kept libraries: PyTorch's AdamW
(the default), AdEMAMix (Pagliardini et al. 2024, "Better, Faster, Older"; pytorch-optimizer's),
Muon for the hidden weight matrices with AdamW for the rest (Jordan et al. 2024, with Moonlight's
shape-adjusted learning rate, Liu et al. 2025, so one `learning_rate` serves both;
pytorch-optimizer's), schedule-free AdamW (Defazio et al. 2024; Meta's `schedulefree`); and the
schedules cosine, linear, constant and warmup-stable-decay (WSD; transformers')."""

from __future__ import annotations

import importlib

import torch
from transformers import get_scheduler, get_wsd_schedule

OPTIMIZERS = ("adamw", "ademamix", "muon", "schedule_free_adamw")
SCHEDULERS = ("cosine", "linear", "constant", "wsd")
# where an optimizer outside PyTorch comes from (the `optimizers` extra installs both)
_PACKAGES = {"ademamix": "pytorch_optimizer", "muon": "pytorch_optimizer",
             "schedule_free_adamw": "schedulefree"}  # fmt: skip


def build_optimizer(name: str, named: list[tuple[str, torch.nn.Parameter]], *, lr: float,
                    weight_decay: float, device, warmup_steps: int) -> torch.optim.Optimizer:  # fmt: skip
    """The optimizer `name` over the trained parameters `named` ((name, parameter) pairs)."""
    params = [param for _, param in named]
    if name == "adamw":
        # PyTorch's fused AdamW updates every tensor in one kernel; on a CPU the default runs a
        # Python loop over the tensors (docs/benchmarks.md: several times slower for full tuning)
        fused = getattr(device, "type", device) in ("cpu", "cuda")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    library = _library(name)
    if name == "ademamix":
        return library.AdEMAMix(params, lr=lr, weight_decay=weight_decay, weight_decouple=True)
    if name == "schedule_free_adamw":
        return library.AdamWScheduleFree(params, lr=lr, weight_decay=weight_decay,
                                         warmup_steps=warmup_steps)  # fmt: skip
    hidden = [param for key, param in named if _is_hidden_matrix(key, param)]
    rest = [param for key, param in named if not _is_hidden_matrix(key, param)]
    groups = [{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}]
    return library.Muon([group for group in groups if group["params"]], lr=lr,
                        weight_decay=weight_decay, adamw_lr=lr, adamw_wd=weight_decay,
                        use_adjusted_lr=True)  # fmt: skip


def _is_hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """Muon's share: 2-D weights inside the network, not the embeddings or the output head."""
    outer = ("embed_tokens", "lm_head", "score", "wte", "wpe")
    return param.ndim == 2 and not any(part in name for part in outer)


def _library(name: str):
    package = _PACKAGES[name]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"optimizer {name} needs {package}: pip install -e '.[optimizers]'"
        ) from None


def build_scheduler(name: str, optimizer, *, steps: int, warmup_ratio: float,
                    decay_ratio: float = 0.1):  # fmt: skip
    """The learning-rate schedule over `steps`, after a linear warmup of `warmup_ratio` of them;
    `wsd` holds the peak until its last `decay_ratio` of the steps, then decays (cosine) to 0. A
    schedule-free optimizer keeps its own (constant after its warmup)."""
    if schedule_free(optimizer):
        return get_scheduler("constant", optimizer)
    warmup = round(warmup_ratio * steps)
    if name == "wsd":
        decay = max(1, round(decay_ratio * steps))
        return get_wsd_schedule(optimizer, num_warmup_steps=warmup, num_decay_steps=decay,
                                num_training_steps=steps)  # fmt: skip
    kind = "constant_with_warmup" if name == "constant" else name
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def schedule_free(optimizer) -> bool:
    """Whether it is a schedule-free optimizer: its weights are evaluated and saved at the
    averaged point (`optimizer.eval()`), trained at the interpolated one (`optimizer.train()`)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds it
    return type(inner).__module__.startswith("schedulefree")
