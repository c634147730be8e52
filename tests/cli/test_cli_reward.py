"""`prefopt reward train` through the real console script: a run with overrides, a resume, a
report, and bad input named by file, row and field."""

import json

import pytest
import yaml

from tiny import toy_rows, write_jsonl

pytestmark = pytest.mark.slow  # real processes: make test-fast skips them


def test_reward_train_then_resume(prefopt_cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "lists.jsonl", toy_rows(32, seed=3, k=3))
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_model),
                "data": str(data),
                "output_dir": str(tmp_path / "rm"),
                "lora": False,
                "learning_rate": 1e-3,
                "max_steps": 3,
                "precision": "fp32",
            }
        )
    )
    result = prefopt_cli("reward", "train", cfg, "--batch_size=4", "--objective=bradley_terry")
    assert result.returncode == 0, result.stderr
    assert "eval reward_accuracy:" in result.stdout and "3 steps" in result.stdout
    assert "reward_model oracle" in result.stdout
    saved = yaml.safe_load((tmp_path / "rm" / "config.yaml").read_text())
    assert saved["objective"] == "bradley_terry" and saved["batch_size"] == 4
    assert (tmp_path / "rm" / "model" / "config.json").exists() and (
        tmp_path / "rm" / "report.html"
    ).exists()
    assert json.loads((tmp_path / "rm" / "model" / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"
    ]
    again = prefopt_cli(
        "reward", "train", cfg, "--batch_size=4", "--objective=bradley_terry", "--resume"
    )
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout and "at step 3" in again.stdout


def test_bad_rows_and_settings_are_named(prefopt_cli, tiny_model, tmp_path):
    rows = toy_rows(6, k=3)
    rows[2]["ranks"] = [1, 0, 2]
    del rows[2]["scores"]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = prefopt_cli("reward", "train", f"--model={tiny_model}", f"--data={data}")
    assert result.returncode == 1
    assert f'{data}, row 3: "ranks"[1] must be a positive integer' in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    wrong = prefopt_cli(
        "reward", "train", f"--data={data}", "--objective=plackett_luce", "--margin=0.5"
    )
    assert (
        wrong.returncode == 2
        and "margin: applies to the bradley_terry objective only" in wrong.stderr
    )
