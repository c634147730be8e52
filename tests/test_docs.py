"""The README documents every objective and every command (a test fails when one is missing)."""

import re

from conftest import ROOT
from prefopt.cli import app
from prefopt.losses import LOSSES

README = (ROOT / "README.md").read_text()


def test_every_loss_is_in_the_readme_table():
    section = README.split("## Objectives", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)`", section, flags=re.M))
    assert documented == set(LOSSES)


def test_every_command_is_in_the_readme():
    for command in app.registered_commands:
        assert f"prefopt {command.name}" in README
    for group in app.registered_groups:
        assert f"prefopt {group.name}" in README
        for command in group.typer_instance.registered_commands:
            assert f"prefopt {group.name} {command.name}" in README


def test_readme_opens_with_the_two_commands():
    head = README[:1500]
    assert "make demo" in head and "make test" in head
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_every_train_setting_is_in_the_readme():
    from prefopt.config import TrainConfig

    section = README.split("## Settings of `prefopt train`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)`", section, flags=re.M))
    assert documented == set(TrainConfig.model_fields)
