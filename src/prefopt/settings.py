"""How every command reads its settings: one pydantic model per command (each in its own package,
e.g. prefopt.train.config), from YAML plus `--key=value` overrides. Unknown keys and bad values
are errors that name the field; the resolved settings are saved with every run."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from prefopt.files import write_atomic


class ConfigError(ValueError):
    pass


def settings_table(model: type[BaseModel]) -> list[tuple[str, str, str]]:
    """(name, default, help) for every field: the source of docs/settings.md and of each
    command's --help."""
    rows = []
    for name, field in model.model_fields.items():
        default = (
            "required" if field.is_required() else field.get_default(call_default_factory=True)
        )
        rows.append((name, str(default), field.description or ""))
    return rows


def type_name(model: type[BaseModel], name: str) -> str:
    """A field's type as a person reads it: `int`, `float | None`, `adamw|muon|…`."""
    annotation = model.model_fields[name].annotation
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    text = re.sub(r"Annotated\[([^,\]]+)[^\]]*\]", r"\1", text)
    text = re.sub(r"Literal\[([^\]]*)\]",
                  lambda m: "|".join(p.strip().strip("'\"") for p in m.group(1).split(",")), text)  # fmt: skip
    text = re.sub(r"Optional\[([^\]]*)\]", r"\1 | None", text)
    return re.sub(r"Union\[([^\]]*)\]", lambda m: " | ".join(m.group(1).split(", ")), text)


def load_config(model: type[BaseModel], path: str | Path | None, overrides: list[str]) -> BaseModel:
    """YAML file (optional) + `--key=value` / `key=value` overrides (dotted keys reach into dicts,
    values are parsed as YAML). Raises ConfigError naming the field."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a mapping of settings")
        values = loaded or {}
    for override in overrides:
        set_dotted(values, *split_override(override))
    return build(model, values, path)


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """values[a][b] = value for the key "a.b" (mappings made on the way)."""
    target = values
    *parents, leaf = key.split(".")
    for parent in parents:
        target = target.setdefault(parent, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--{key}: {parent} is not a mapping")
    target[leaf] = value


def build(
    model: type[BaseModel], values: dict[str, Any], source: str | Path | None = None
) -> BaseModel:
    """`model(**values)`, with every error a ConfigError naming the field (and `source`)."""
    try:
        return model(**values)
    except ValidationError as error:
        raise ConfigError(_describe(error, model, source)) from None
    except ValueError as error:
        raise ConfigError(f"{source or 'config'}: {error}") from None


def split_override(text: str) -> tuple[str, Any]:
    """`--key=value` -> (key, value parsed as YAML)."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(f"{text}: overrides are --key=value")
    key, raw = body.split("=", 1)
    key = key.replace("-", "_")
    try:
        return key, yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        return key, raw


def _describe(error: ValidationError, model: type[BaseModel], path) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][0]), list(model.model_fields), n=1)
            message = "unknown setting" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif item["type"] == "missing":
            message = "required setting is missing"
        else:
            message += f" (got {item.get('input')!r})"
        lines.append(f"{field}: {message.removeprefix('Value error, ')}")
    return f"{path or 'config'}: " + "; ".join(lines)


def save_config(config: BaseModel, path: Path) -> None:
    write_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
