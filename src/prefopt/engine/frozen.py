"""A LoRA run's frozen base weights held in the compute dtype while it trains under autocast.

Autocast casts a float32 weight to bf16 at every linear of every forward (it caches casts only of
weights that require grad), and the bf16 copy is what the backward keeps for the input gradient.
A frozen base weight goes into nothing but those matmuls, so holding it in bf16 gives the very
operand autocast would make: the same numbers bit for bit, without the casts, without the kept
copies and at half the resident size (docs/performance.md has what it saves).

bf16 drops the float32 weight's lower mantissa bits, which the saved model must keep: before a
LoRA run saves (merging the adapters into the base, for a reward model), `restore_frozen` reads
the float32 weights back from the model's safetensors files, after checking that they still round
to what the run trained against. Weights that cannot be read back (no safetensors, a tied weight,
a name not in the files) stay in float32."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from peft.tuners.lora.layer import LoraLayer

from prefopt.errors import TrainingError

_ATTRIBUTE = "prefopt_frozen"  # a plain attribute on the model: never saved with it


@dataclasses.dataclass(frozen=True)
class FrozenWeights:
    """Where each cast weight's float32 values are on disk: {parameter name in the model: (file, key)}."""

    folder: str
    places: dict[str, tuple[str, str]]


def keep_frozen_in(model: torch.nn.Module, dtype: torch.dtype, folder: str) -> int:
    """Cast the frozen base weights of `model`'s LoRA linears to `dtype` where `folder` (the
    model's source) holds their float32 values; returns how many were cast."""
    on_disk = _safetensors_keys(Path(folder))
    uses: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        uses[id(parameter)] = uses.get(id(parameter), 0) + 1
    places = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(module, LoraLayer) or type(base) is not torch.nn.Linear:
            continue
        weight = base.weight
        key = _disk_key(f"{name}.base_layer.weight")
        if (
            weight.requires_grad
            or weight.dtype != torch.float32
            or uses[id(weight)] > 1
            or key not in on_disk
        ):
            continue  # a bias stays as it is: autocast casts it, and it is small
        weight.data = weight.data.to(dtype)
        places[f"{name}.base_layer.weight"] = (on_disk[key], key)
    if places:
        setattr(model, _ATTRIBUTE, FrozenWeights(folder, places))
    return len(places)


def restore_frozen(model: torch.nn.Module) -> int:
    """The float32 values of the weights `keep_frozen_in` cast, read back from their files;
    returns how many. Raises if a file no longer holds what the run trained against."""
    frozen: FrozenWeights | None = getattr(model, _ATTRIBUTE, None)
    if frozen is None:
        return 0
    parameters = dict(model.named_parameters())
    by_file: dict[str, dict[str, str]] = {}
    for name, (file, key) in frozen.places.items():
        by_file.setdefault(file, {})[key] = name
    for file, names in by_file.items():
        for key, exact in _read_tensors(file, list(names)):
            parameter, exact = parameters[names[key]], exact.to(torch.float32)
            if exact.shape != parameter.shape or not torch.equal(
                exact.to(parameter.dtype), parameter.data
            ):
                raise TrainingError(
                    f"{file}: {key} is not the weight this run trained against (the model folder "
                    f"{frozen.folder} changed during the run); the model was not saved, its "
                    "checkpoints are kept"
                )
            parameter.data = exact
    delattr(model, _ATTRIBUTE)
    return len(frozen.places)


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _header(file: str) -> tuple[int, dict]:
    """A safetensors file's header: where its data begin, and {key: dtype, shape, data offsets}."""
    with open(file, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return 8 + size, json.loads(handle.read(size))


def _read_tensors(file: str, keys: list[str]):
    """(key, tensor) for each of `keys` of a safetensors file, read with plain file reads:
    safetensors' own reader maps the file, and every mapped page it touches counts in the
    process's resident memory (for the default model's weights, above a LoRA run's training
    peak)."""
    begin, header = _header(file)
    with open(file, "rb") as handle:
        for key in keys:
            entry = header[key]
            start, end = entry["data_offsets"]
            data = bytearray(end - start)
            handle.seek(begin + start)
            handle.readinto(data)
            yield key, torch.frombuffer(data, dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def _disk_key(name: str) -> str:
    """The checkpoint's key of a parameter of a peft-wrapped model: without peft's wrappers."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _safetensors_keys(folder: Path) -> dict[str, str]:
    """{tensor key: its file} over the folder's safetensors (one file, or shards with an index), of
    the tensors stored in a float dtype that float32 holds exactly."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = {
            str(folder / file)
            for file in json.loads(index.read_text()).get("weight_map", {}).values()
        }
    else:
        files = (
            {str(folder / "model.safetensors")}
            if (folder / "model.safetensors").exists()
            else set()
        )
    return {
        key: file
        for file in sorted(files)
        for key, entry in _header(file)[1].items()
        if key != "__metadata__" and entry["dtype"] in _DTYPES
    }
