"""`prefopt train` end to end through the real console script: a run, a resume, and bad input
that gets one clear message, a non-zero exit and no traceback."""

import json

import pytest
import yaml

from tiny import toy_rows, write_jsonl

pytestmark = pytest.mark.slow  # real processes: make test-fast skips them


def write_config(path, **settings):
    path.write_text(yaml.safe_dump(settings))
    return path


def test_train_then_resume(prefopt_cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "lists.jsonl", toy_rows(24, seed=3, k=3))
    cfg = write_config(
        tmp_path / "run.yaml",
        model=str(tiny_model),
        data=str(data),
        output_dir=str(tmp_path / "out"),
        loss="plackett_luce",
        lora=True,
        learning_rate=1e-3,
        max_steps=3,
        precision="fp32",
    )
    result = prefopt_cli("train", cfg, "--batch_size=2", "--loss_params.plackett_luce.beta=0.5")
    assert result.returncode == 0, result.stderr
    assert "eval reward_accuracy:" in result.stdout and "3 steps" in result.stdout
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["batch_size"] == 2 and saved["loss_params"] == {"plackett_luce": {"beta": 0.5}}
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [line["step"] for line in lines if line["split"] == "train"] == [1, 2, 3]
    again = prefopt_cli(
        "train", cfg, "--batch_size=2", "--loss_params.plackett_luce.beta=0.5", "--resume"
    )
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout and "at step 3" in again.stdout


def test_bad_data_file_names_the_row(prefopt_cli, tiny_model, tmp_path):
    rows = toy_rows(5)
    rows[3]["chosen"] = ""
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = write_config(
        tmp_path / "run.yaml", model=str(tiny_model), data=str(data), output_dir=str(tmp_path / "o")
    )
    result = prefopt_cli("train", cfg)
    assert result.returncode == 1
    assert f'{data}, row 4: "chosen" is empty' in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    skipped = prefopt_cli(
        "train", cfg, "--skip_invalid=true", "--max_steps=1", "--lora=false", "--precision=fp32"
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 invalid rows (1 empty text)" in skipped.stdout


def test_a_config_error_is_one_line_and_exit_code_2(prefopt_cli, tmp_path):
    """The messages themselves are checked in-process (tests/train/test_config.py)."""
    cfg = write_config(tmp_path / "run.yaml", data="x.jsonl", learning_rat=1e-4)
    result = prefopt_cli("train", cfg)
    assert result.returncode == 2
    assert "learning_rat: unknown setting (did you mean 'learning_rate'?)" in result.stderr
    assert "Traceback" not in result.stderr
