"""The built-in instruction-following task: deterministic from its seed, no prompt in two files,
unseen constraint types kept out of training, every prompt checkable by the verifier; the
example loop config that uses it loads."""

import json

from prefopt.demo import TRAINED, UNSEEN, write_task
from prefopt.oracles.constraints import check_constraints


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_task_files(tmp_path):
    files = write_task(tmp_path / "a", train=50, heldout=20, unseen=10, seed=3)
    again = write_task(tmp_path / "b", train=50, heldout=20, unseen=10, seed=3)
    assert all(files[name].read_text() == again[name].read_text() for name in files)
    rows = {name: read(path) for name, path in files.items()}
    assert [len(rows[n]) for n in ("train", "heldout", "unseen")] == [50, 20, 10]
    prompts = [row["prompt"][0]["content"] for group in rows.values() for row in group]
    assert len(prompts) == len(set(prompts))
    kinds = lambda name: {c["type"] for row in rows[name] for c in row["constraints"]}
    assert (
        kinds("train") <= set(TRAINED)
        and kinds("heldout") <= set(TRAINED)
        and kinds("unseen") <= set(UNSEEN)
    )
    for group in rows.values():
        for row in group:
            assert set(check_constraints(row["prompt"], "an answer", row)) >= {
                c["type"] for c in row["constraints"]
            }


def test_the_shipped_task_and_the_example_loop_config(tmp_path):
    from conftest import ROOT
    from prefopt.loop import LoopConfig
    from prefopt.settings import load_config

    shipped = {
        name: (ROOT / "examples" / "data" / f"task_{name}.jsonl")
        for name in ("train", "heldout", "unseen")
    }
    regenerated = write_task(tmp_path)
    assert all(shipped[name].read_text() == regenerated[name].read_text() for name in shipped)
    config = load_config(LoopConfig, ROOT / "examples" / "loop.yaml", [])
    assert (ROOT / config.prompts).exists() and (ROOT / config.heldout).exists()
