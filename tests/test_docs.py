"""The docs say what the code does: the generated pages (settings, losses) equal what the code
prints, the README names every command and stays short, and every link in the docs resolves."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT
from prefopt.cli import app

README = (ROOT / "README.md").read_text()


def test_generated_pages_match_the_code():
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_losses_page_has_a_row_per_registered_loss():
    from prefopt.losses import LOSSES

    page = (ROOT / "docs" / "losses.md").read_text()
    table = page.split("## The registered losses", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `([a-z_0-9]+)`", table, flags=re.M)) == set(LOSSES)


def test_every_command_is_in_the_readme():
    for command in app.registered_commands:
        assert f"prefopt {command.name}" in README
    for group in app.registered_groups:
        assert f"prefopt {group.name}" in README
        for command in group.typer_instance.registered_commands:
            assert f"prefopt {group.name} {command.name}" in README


def test_readme_opens_with_the_two_commands_and_reads_in_five_minutes():
    head = README[:1500]
    assert "make demo" in head and "make test" in head
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")
    assert len(README.splitlines()) <= 200


def test_every_relative_link_resolves():
    for page in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code is not linked
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
            if "://" not in target:
                assert (page.parent / target).exists(), (
                    f"{page.name} links to {target}, which does not exist"
                )


def test_every_example_config_loads_and_its_data_reads():
    from prefopt.data import load_records
    from prefopt.loop.config import LoopConfig
    from prefopt.rl.config import RLConfig
    from prefopt.settings import load_config
    from prefopt.train import TrainConfig
    from prefopt.tune.config import TuneConfig

    kinds = {"loop": LoopConfig, "rl": RLConfig, "tune": TuneConfig}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        config = load_config(kinds.get(path.stem, TrainConfig), str(path), [])
        data = getattr(config, "data", None)
        if data and (ROOT / data).exists():
            objective = config.build_objective()
            assert load_records(ROOT / data, single_answers=objective.unpaired).records, path


SETTINGS_COMMANDS = [
    (["train"], "prefopt.train.config:TrainConfig"),
    (["reward", "train"], "prefopt.reward.config:RewardConfig"),
    (["generate"], "prefopt.generate.config:GenerateConfig"),
    (["score"], "prefopt.oracles:ScoreConfig"),
    (["eval"], "prefopt.evaluate.run:EvalConfig"),
    (["loop"], "prefopt.loop.config:LoopConfig"),
    (["rl"], "prefopt.rl.config:RLConfig"),
    (["tune"], "prefopt.tune.config:TuneConfig"),
]


@pytest.mark.parametrize(("command", "model"), SETTINGS_COMMANDS, ids=lambda v: str(v))
def test_help_lists_every_setting_as_the_settings_page_does(command, model):
    """--help and docs/settings.md read one source (settings_table): every setting, its type,
    default and meaning, in both."""
    import importlib

    from typer.testing import CliRunner

    from prefopt.settings import settings_table, type_name

    module, name = model.split(":")
    settings = getattr(importlib.import_module(module), name)
    result = CliRunner().invoke(
        app, [*command, "--help"], env={"COLUMNS": "2000"}, terminal_width=2000
    )
    assert result.exit_code == 0, result.output
    lines = {line.strip() for line in result.output.splitlines()}
    page = (ROOT / "docs" / "settings.md").read_text()
    for key, default, meaning in settings_table(settings):
        assert (
            f"{key} ({type_name(settings, key)}, default {default}): {meaning}".strip() in lines
        ), key
        assert f"| `{key}` |" in page, key
