"""Reference log-probs cached on disk, reused by every epoch, run and tuning trial.

The key of a list is a hash of its token ids (so data, tokenizer, chat template and truncation
settings are all in it); the key of the file is a fingerprint of the reference weights plus
everything that changes the numbers (precision, layout, padding). Change any of them and the
entries simply miss."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.files import write_atomic


def list_key(example: TokenizedList) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([example.prompt_ids, example.completion_ids]).encode())
    return digest.hexdigest()[:32]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every reference weight, sampled (a strided slice of each tensor), so it costs
    milliseconds; LoRA adapter weights are not part of the reference and are left out."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if "lora_" in name:
            continue
        if hasattr(parameter, "full_tensor"):  # sharded (FSDP): every process gathers it
            parameter = parameter.full_tensor()
        flat = parameter.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)].float().cpu()
        digest.update(name.encode())
        digest.update(str(tuple(parameter.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:32]


class ReferenceCache:
    """{list key: [K log-probs]} in one file per reference setting."""

    def __init__(self, folder: Path, setting: dict):
        key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(folder) / f"{key}.pt"
        self.entries: dict[str, list[float]] = {}
        self.changed = False
        if self.path.exists():
            try:
                self.entries = torch.load(self.path, weights_only=True)
            except Exception:  # a damaged cache file is only a cache: start it again
                self.entries = {}

    def get(self, key: str) -> list[float] | None:
        return self.entries.get(key)

    def put(self, key: str, logps: list[float]) -> None:
        self.entries[key] = logps
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        write_atomic(self.path, lambda staging: torch.save(self.entries, staging))
        self.changed = False
