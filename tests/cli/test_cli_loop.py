"""`prefopt loop` through the real entry point: a round on the tiny model, and faults that stop it
with one clear line and keep what was saved (a verifier that cannot be imported, a label store
that cannot be reached)."""

import json

import pytest
import yaml

from label_helpers import free_port
from tiny import write_jsonl

pytestmark = pytest.mark.slow  # real processes: make test-fast skips them


def write_config(tmp_path, tiny_model, **overrides):
    pool = write_jsonl(
        tmp_path / "pool.jsonl", [{"prompt": f"question {i}: apple"} for i in range(20)]
    )
    (tmp_path / "verify.py").write_text(
        "def short(prompt, completion, record):\n    return -len(completion)\n"
    )
    config = {
        "model": str(tiny_model),
        "prompts": str(pool),
        "oracle": "verifier",
        "oracle_options": {"function": f"{tmp_path / 'verify.py'}:short"},
        "rounds": 1,
        "labels_per_round": 2,
        "candidates_per_label": 2,
        "k": 3,
        "max_new_tokens": 6,
        "precision": "fp32",
        "train": {"loss": "plackett_luce", "lora": True, "max_steps": 1, "batch_size": 2},
        "output_dir": str(tmp_path / "run"),
        **overrides,
    }
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_round_through_the_command_line(prefopt_cli, tiny_model, tmp_path):
    done = prefopt_cli("loop", write_config(tmp_path, tiny_model), "--rounds=2")
    assert done.returncode == 0, done.stderr
    assert (
        "round 2: 2 labels (4 in all)" in done.stdout
        and (tmp_path / "run" / "report.html").exists()
    )
    rounds = (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in rounds] == [0, 1]


def test_faults_stop_with_one_clear_line_and_keep_what_was_saved(prefopt_cli, tiny_model, tmp_path):
    broken = write_config(
        tmp_path, tiny_model, oracle_options={"function": f"{tmp_path / 'nowhere.py'}:short"}
    )
    done = prefopt_cli("loop", broken)
    assert (
        done.returncode == 1 and "nowhere.py" in done.stderr and "Traceback" not in done.stderr
    ), done.stderr
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"  # nothing listens there
    people = write_config(
        tmp_path,
        tiny_model,
        oracle="people",
        oracle_options={"db": url},
        output_dir=str(tmp_path / "people"),
    )
    done = prefopt_cli("loop", people)
    assert done.returncode == 1 and "database:" in done.stderr and "Traceback" not in done.stderr, (
        done.stderr
    )
    assert (
        tmp_path / "people" / "round-0" / "acquisition.json"
    ).exists()  # generation and acquisition kept
