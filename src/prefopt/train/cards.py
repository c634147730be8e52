"""Model cards: every model folder a run saves gets a README.md in the Hugging Face Hub's format,
rendered by huggingface_hub (`ModelCard`): YAML front matter (base_model, library_name, tags,
datasets and license where known), then how the model was trained (the objective with its formula
and paper, the data with counts, the settings that matter, the last evaluation with its
intervals, prefopt's version) and how to load it with transformers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

import prefopt
from prefopt.engine.model import DEFAULT_HUB_ID, DEFAULT_LICENSE, DEFAULT_MODEL


@dataclasses.dataclass
class CardFacts:
    """What a run knows about the model it saves."""

    base_model: str  # the `model` setting: a Hub id, a folder, a .gguf file or `default`
    command: str  # "prefopt train", "prefopt reward train", "prefopt rl"
    # (name, weight, parameters, formula, paper) of each term of the objective
    objective: list[tuple[str, float, dict, str, str]]
    data: str | None = None  # the data setting (a file, a folder or a Hub id), or the prompts
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # e.g. train lists, steps
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # the ones that matter
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)  # the last eval line
    reward_model: bool = False


def write_card(folder: Path, facts: CardFacts) -> Path:
    """Write folder/README.md for the model saved there (a full model or PEFT adapters)."""
    base, license_ = _base(facts.base_model)
    adapters = (folder / "adapter_config.json").exists()
    names = [term[0] for term in facts.objective]
    tags = ["prefopt", *names, "reward-model" if facts.reward_model else "alignment"]
    data = ModelCardData(
        base_model=base,
        library_name="peft" if adapters else "transformers",
        tags=tags + (["lora"] if adapters else []),
        datasets=[facts.data] if _hub_id(facts.data) else None,
        license=license_,
        pipeline_tag="text-classification" if facts.reward_model else "text-generation",
    )
    body = "\n\n".join([
        f"# {folder.parent.name}/{folder.name}",
        f"{'A reward model' if facts.reward_model else 'A policy'} trained from `{base or facts.base_model}` "
        f"with prefopt {prefopt.__version__} (`{facts.command}`).",
        _objective(facts), _data(facts), _settings(facts), _evaluation(facts),
        _loading(folder.name, adapters, facts.reward_model),
    ])  # fmt: skip
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    path = folder / "README.md"
    card.save(path)
    return path


def _base(spec: str) -> tuple[str | None, str | None]:
    """The base model's Hub id and license where known: `default`'s, or a folder's own card."""
    if spec == DEFAULT_MODEL:
        return DEFAULT_HUB_ID, DEFAULT_LICENSE
    readme = Path(spec) / "README.md"
    if readme.is_file():
        found = ModelCard.load(readme).data
        return getattr(found, "base_model", None) or spec, getattr(found, "license", None)
    return (spec, None) if _hub_id(spec) else (None, None)


def _hub_id(spec: str | None) -> bool:
    return bool(spec) and spec.count("/") == 1 and not Path(spec).exists() and \
        not spec.startswith((".", "/"))  # fmt: skip


def _objective(facts: CardFacts) -> str:
    lines = ["## Objective", ""]
    for name, weight, params, formula, paper in facts.objective:
        shown = f" with {json.dumps(params)}" if params else ""
        lines.append(f"- `{name}` (weight {weight:g}){shown}: {formula}. {paper}.")
    return "\n".join(lines)


def _data(facts: CardFacts) -> str:
    counts = ", ".join(f"{value:,} {key}" for key, value in facts.counts.items())
    return f"## Data\n\n`{facts.data}`" + (f": {counts}." if counts else ".")


def _settings(facts: CardFacts) -> str:
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in facts.settings.items())
    return f"## Settings\n\n| setting | value |\n|---|---|\n{rows}"


def _evaluation(facts: CardFacts) -> str:
    if not facts.evaluation:
        return "## Evaluation\n\nNo evaluation was run."
    rows = []
    for key, value in facts.evaluation.items():
        if isinstance(value, dict) and "value" in value:  # an estimate with its 95% interval
            rows.append(
                f"| {key} | {value['value']:.4g} [{value['low']:.4g}, {value['high']:.4g}] |"
            )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            rows.append(f"| {key} | {value:.4g} |")
    table = "\n".join(rows)
    return f"## Evaluation\n\nThe last held-out evaluation of the run:\n\n| metric | value |\n|---|---|\n{table}"


def _loading(name: str, adapters: bool, reward_model: bool) -> str:
    head = "SequenceClassification" if reward_model else "CausalLM"
    auto = f"AutoPeftModelFor{head}" if adapters else f"AutoModelFor{head}"
    library = "peft" if adapters else "transformers"
    lines = [
        f"from {library} import {auto}",
        "from transformers import AutoTokenizer",
        "",
        f'model = {auto}.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
    ]
    if reward_model:
        lines.append(
            'reward = model(**tokenizer(prompt_and_answer, return_tensors="pt")).logits[0, 0]'
        )
    code = "\n".join(lines)
    return f"## Use\n\n```python\n{code}\n```"
