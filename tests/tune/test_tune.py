"""`prefopt tune` on the tiny model: the study file is checked when loaded, a study runs its trials
(each a run folder), failed trials are marked with their reason and the study goes on, several
objectives give a Pareto front, a study resumes, and two processes share a PostgreSQL storage
without running a trial twice."""

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from prefopt.tune import TuneConfig, tune
from tiny import toy_rows, write_jsonl


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", toy_rows(32, seed=4))


def base(tiny_model, data, **overrides):
    return {
        "model": str(tiny_model),
        "data": str(data),
        "precision": "fp32",
        "lora": False,
        "max_steps": 3,
        "batch_size": 4,
        "eval_fraction": 0.25,
        "warmup_ratio": 0.0,
        **overrides,
    }


SPACE = {
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "loss": {"choices": ["dpo", "ipo"]},
    "loss_params.dpo.beta": {"low": 0.05, "high": 0.5, "when": {"loss": "dpo"}},
}


def study(tiny_model, data, out, **overrides):
    return TuneConfig(
        **{
            "base": base(tiny_model, data),
            "space": SPACE,
            "n_trials": 4,
            "output_dir": str(out),
            **overrides,
        }
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"learning_rat": {"low": 1e-4, "high": 1e-3}}}, "learning_rat"),
        (
            {"space": {"learning_rate": {"low": 1e-3, "high": 1e-4}}},
            "low (0.001) must be below high",
        ),
        (
            {"space": {"learning_rate": {"low": 0.0, "high": 1e-4, "log": True}}},
            "log scale needs low > 0",
        ),
        ({"space": {"loss": {"choices": ["dpo", "nope"]}}}, "unknown loss 'nope'"),
        (
            {"space": {"lora_r": {"low": 2, "high": 8, "when": {"los": "dpo"}}}},
            "'los' is not a setting",
        ),
        (
            {
                "objectives": {"reward_accuracy": "maximize", "seconds": "minimize"},
                "pruner": "median",
            },
            "prunes single-objective studies only",
        ),
        ({"n_trials": None}, "give a budget"),
    ],
)
def test_the_study_file_is_checked_when_loaded(tiny_model, data, tmp_path, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        study(tiny_model, data, tmp_path, **change)


def test_a_study_runs_its_trials_each_in_a_run_folder(tiny_model, data, tmp_path):
    result = tune(study(tiny_model, data, tmp_path))
    assert [t["state"] for t in result.trials] == ["COMPLETE"] * 4
    for trial in result.trials:
        assert Path(trial["run"]) == tmp_path / f"trial-{trial['number']}"
        assert (Path(trial["run"]) / "metrics.jsonl").exists() and (
            Path(trial["run"]) / "config.yaml"
        ).exists()
        # `when`
        assert ("loss_params.dpo.beta" in trial["params"]) == (trial["params"]["loss"] == "dpo")
        assert 0 <= trial["overhead_seconds"] <= trial["seconds"]
    assert len(result.best) == 1
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["best"] == result.best and set(saved["importances"]["reward_accuracy"]) <= set(
        SPACE
    )
    with pytest.raises(ValueError, match="already exists.*--resume"):
        tune(study(tiny_model, data, tmp_path))
    more = tune(study(tiny_model, data, tmp_path), resume=True, n_trials=5)
    assert len(more.trials) == 5 and more.trials[:4] == result.trials


def test_a_failed_trial_is_marked_with_its_reason_and_the_study_goes_on(tiny_model, data, tmp_path):
    result = tune(
        study(
            tiny_model,
            data,
            tmp_path,
            n_trials=2,
            space={"learning_rate": {"low": 1e30, "high": 1e31}},
        )
    )
    assert [t["state"] for t in result.trials] == ["FAIL", "FAIL"]
    assert all("non-finite" in t["failure"] for t in result.trials) and result.best == []


def test_several_objectives_give_a_pareto_front_and_pruning_reads_the_evaluations(
    tiny_model, data, tmp_path
):
    front = tune(
        study(
            tiny_model,
            data,
            tmp_path / "front",
            sampler="nsga2",
            objectives={"reward_accuracy": "maximize", "seconds": "minimize"},
        )
    )
    assert front.best and all(len(t["values"]) == 2 for t in front.trials)
    pruned = study(
        tiny_model,
        data,
        tmp_path / "pruned",
        pruner="median",
        base=base(tiny_model, data, eval_every=1),
    )
    tune(pruned)
    trials = optuna.load_study(
        study_name="prefopt", storage=f"sqlite:///{tmp_path / 'pruned' / 'study.db'}"
    ).trials
    assert all(t.intermediate_values for t in trials if t.state.name in ("COMPLETE", "PRUNED"))


@pytest.mark.slow
def test_two_processes_share_a_postgres_study_and_run_no_trial_twice(
    tiny_model, data, tmp_path, postgres_url
):
    import sqlalchemy as sa

    # a database of its own: the label store's migrations and Optuna's both keep an alembic_version table
    with sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(sa.text("DROP DATABASE IF EXISTS tune_study"))
        connection.execute(sa.text("CREATE DATABASE tune_study"))
    postgres_url = postgres_url.rsplit("/", 1)[0] + "/tune_study"
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": base(tiny_model, data),
                "space": SPACE,
                "n_trials": 6,
                "storage": postgres_url,
                "study_name": "shared",
                "output_dir": str(tmp_path),
            }
        )
    )
    script = Path(sys.executable).parent / "prefopt"
    # --resume: whichever process comes first creates the study, the other joins it
    processes = [
        subprocess.Popen(
            [str(script), "tune", str(config), "--resume"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-3000:] for _, err in outputs]
    trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and 6 <= len(trials) <= 7
    assert all(t.state.name == "COMPLETE" for t in trials)
    runs = [t.user_attrs["run"] for t in trials]
    assert len(set(runs)) == len(runs) and all((Path(run) / "model").exists() for run in runs)


@pytest.mark.slow
def test_a_database_holding_other_tables_is_refused_with_a_clear_message(
    tiny_model, data, tmp_path
):
    from prefopt.label.store import Store

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    Store(url)  # the label store's tables and its own alembic_version
    with pytest.raises(ValueError, match="Optuna cannot use this database.*a database of its own"):
        tune(study(tiny_model, data, tmp_path / "study", storage=url))
