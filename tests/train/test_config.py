"""The settings of `prefopt train`: YAML plus --key=value overrides, errors that name the field."""

import pytest
import yaml

from prefopt.settings import ConfigError, load_config
from prefopt.train import TrainConfig


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": "x.jsonl"}))
    return path


@pytest.mark.parametrize(
    "override, message",
    [
        ("--learning_rat=1e-4", "learning_rat: unknown setting (did you mean 'learning_rate'?)"),
        ("--batch_size=many", "batch_size: Input should be a valid integer"),
        ("--loss=dpoo", "unknown loss 'dpoo'; valid losses:"),
        ("--loss_params.dpo.betta=1", "dpo has no parameter 'betta'; valid: beta"),
        ("--loss_params.dpo.beta=-1", "dpo: beta must be > 0, got -1"),
        ("--precision=fp8", "precision: Input should be 'auto', 'fp32' or 'bf16' (got 'fp8')"),
        ("batch_size", "batch_size: overrides are --key=value"),
    ],
)
def test_errors_name_the_field(config_file, override, message):
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, config_file, [override])
    assert message in str(error.value)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="none.yaml: no such config file"):
        load_config(TrainConfig, tmp_path / "none.yaml", [])
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(TrainConfig, tmp_path / "bad.yaml", [])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(TrainConfig, tmp_path / "list.yaml", [])


def test_overrides_reach_into_mappings_and_parse_as_yaml(config_file):
    config = load_config(
        TrainConfig,
        config_file,
        ["--loss={dpo: 1.0, sft: 0.5}", "--loss_params.dpo.beta=0.2", "--max-steps=3"],
    )
    assert config.loss == {"dpo": 1.0, "sft": 0.5} and config.loss_params == {"dpo": {"beta": 0.2}}
    assert config.max_steps == 3
