"""report_to: each tracker that works offline, run for real and read back with its own reader —
TensorBoard's event files with its EventAccumulator, MLflow's local store with its client, W&B's
offline run files with its own parser, trackio's local database with its API. Nothing touches the
network."""

import json

import pytest

from prefopt.data import DataError
from prefopt.rl import RLConfig, rl
from prefopt.train import train
from tiny import tiny_train_config, toy_rows, write_jsonl


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", toy_rows(24, seed=1))


def test_a_tracker_that_is_not_installed_is_named_before_training(
    tiny_model, pairs, tmp_path, monkeypatch
):
    import accelerate.tracking

    installed = [k for k in accelerate.tracking.get_available_trackers() if str(k) != "mlflow"]
    monkeypatch.setattr(accelerate.tracking, "_available_trackers", installed)
    out = tmp_path / "run"
    config = tiny_train_config(tiny_model, pairs, out, max_steps=1, report_to=["mlflow"])
    with pytest.raises(DataError, match=r"report_to: mlflow not installed: pip install"):
        train(config)
    assert not (out / "metrics.jsonl").exists()


def metric_lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_metrics_line_and_the_settings(tiny_model, pairs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(
        tiny_train_config(
            tiny_model, pairs, out, lora=False, max_steps=3, report_to=["tensorboard"]
        )
    )
    folders = [path.parent for path in (out / "prefopt").rglob("events.out.tfevents.*")]
    scalars, images = {}, {}
    for folder in folders:
        events = EventAccumulator(str(folder))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in events.Scalars(tag)]
        images |= {tag: events.Images(tag) for tag in events.Tags()["images"]}
    lines = metric_lines(out)
    train_loss = [(l["step"], l["loss"]) for l in lines if l["split"] == "train"]  # noqa: E741
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scalars["train/loss"]] == train_loss
    assert [s for s, _ in scalars["eval/loss"]] == [0, 3]
    assert {"report/quality", "report/optimisation"} <= set(images)
    assert {image.step for image in images["report/quality"]} == {3}
    assert images["report/quality"][0].width > 400  # the report's figure, not a blank


def test_mlflow_stores_parameters_and_metrics_in_the_run_folder(
    tiny_model, pairs, tmp_path, monkeypatch
):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    train(tiny_train_config(tiny_model, pairs, out, lora=False, max_steps=2, report_to=["mlflow"]))
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "prefopt"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["loss"] == "dpo" and run.data.params["max_steps"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    assert run.info.run_name == "run"
    figures = [item.path for item in client.list_artifacts(run.info.run_id, "report")]
    assert "report/quality.png" in figures
    mlflow.set_tracking_uri(None)


def test_wandb_offline_run_holds_the_history(tiny_model, pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(tiny_train_config(tiny_model, pairs, out, lora=False, max_steps=2, report_to=["wandb"]))
    written_out()
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    store = DataStore()
    store.open_for_scan(str(run_file))
    key = lambda item: "/".join(item.nested_key) or item.key
    history, config = [], {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({key(item): json.loads(item.value_json) for item in record.history.item})
        if record.WhichOneof("record_type") in ("config", "run"):  # at the start, or later
            update = (record.config if record.HasField("config") else record.run.config).update
            config |= {key(item): json.loads(item.value_json) for item in update}
    steps = [row for row in history if "train/loss" in row]
    assert [row["_step"] for row in steps] == [1, 2]
    assert config["loss"] == "dpo"
    (figures,) = [row for row in history if "report/quality/_type" in row]
    assert figures["report/quality/_type"] == "images/separated" and figures["_step"] == 2
    assert figures["report/quality/width"] > 400


def test_trackio_logs_an_rl_run_locally(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    import trackio

    folder = tmp_path / "rl"
    folder.mkdir()
    (folder / "verify.py").write_text(
        "def count_a(prompt, completion, record):\n    return completion.count('a') / 8\n"
    )
    prompts = write_jsonl(
        folder / "prompts.jsonl", [{"prompt": f"say {i}: apple"} for i in range(4)]
    )
    out = tmp_path / "rl-out"
    rl(RLConfig(model=str(tiny_model), prompts=str(prompts), output_dir=str(out),
                oracle_options={"function": f"{folder / 'verify.py'}:count_a"}, k=2,
                prompts_per_step=2, max_new_tokens=4, max_steps=2, precision="fp32",
                report_to=["trackio"], run_name="rl-run"))  # fmt: skip
    logs = (
        trackio.get_logs(project="prefopt", run="rl-run") if hasattr(trackio, "get_logs") else None
    )
    if logs is None:
        from trackio.sqlite_storage import SQLiteStorage

        logs = SQLiteStorage.get_logs(project="prefopt", run="rl-run")
    assert [row["step"] for row in logs if "train/reward" in row] == [1, 2]
    (figures,) = [row for row in logs if "report/learning" in row]
    assert figures["step"] == 2 and figures["report/phases"]["_type"] == "trackio.image"


def written_out() -> None:
    """W&B's service process writes a run's file after the run has finished in this process: ended,
    it has written everything (a file read at once sometimes lacked the history)."""
    import wandb

    wandb.teardown()


def wandb_runs(folder):
    """(run record, config) of every W&B offline run file under `folder`."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    written_out()

    found = []
    for path in sorted(folder.rglob("run-*.wandb")):
        store = DataStore()
        store.open_for_scan(str(path))
        run = None
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "run":
                run = record.run
        found.append(run)
    return found


def test_a_study_s_trials_are_runs_grouped_by_the_study(tiny_model, pairs, tmp_path, monkeypatch):
    from prefopt.tune import TuneConfig, tune

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    base = dict(model=str(tiny_model), data=str(pairs), precision="fp32", lora=False, max_steps=2,
                eval_fraction=0.25, report_to=["wandb"])  # fmt: skip
    tune(TuneConfig(base=base, space={"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                    n_trials=2, output_dir=str(tmp_path / "study"), study_name="lr-sweep"))  # fmt: skip
    runs = wandb_runs(tmp_path / "study")
    assert sorted(run.display_name for run in runs) == ["trial-0", "trial-1"]
    assert {run.run_group for run in runs} == {"lr-sweep"}


def test_a_loop_is_a_run_of_its_rounds_and_each_round_s_training_a_run_beside_it(
    tiny_model, tmp_path, monkeypatch
):
    """TensorBoard, MLflow and W&B at once (each keeps one run open per process unless told):
    the loop's rounds.jsonl lines in its own run, every round's training in a run `round-N`."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prefopt.loop import LoopConfig, loop

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "verify.py").write_text("def short(prompt, completion, record):\n"
                                        "    return -len(completion)\n")  # fmt: skip
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": f"question {i}"} for i in range(12)])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": "held out: river"}])
    out = tmp_path / "my-loop"
    loop(LoopConfig(model=str(tiny_model), prompts=str(pool), heldout=str(heldout),
                    oracle="verifier", oracle_options={"function": f"{tmp_path}/verify.py:short"},
                    rounds=2, labels_per_round=2, candidates_per_label=2, k=2, max_new_tokens=4,
                    train={"loss": "plackett_luce", "max_steps": 1, "batch_size": 2},
                    precision="fp32", output_dir=str(out),
                    report_to=["tensorboard", "mlflow", "wandb"]))  # fmt: skip
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]

    events = EventAccumulator(str(out / "prefopt"))
    events.Reload()
    labels = [(e.step, e.value) for e in events.Scalars("round/labels_total")]
    assert labels == [(1, rounds[0]["labels_total"]), (2, rounds[1]["labels_total"])]
    assert "report/curves" in events.Tags()["images"]

    runs = wandb_runs(out)
    assert sorted(run.display_name for run in runs) == ["my-loop", "round-0", "round-1"]
    assert {run.run_group for run in runs} == {"my-loop"}

    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "prefopt"]
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'my-loop'")
    history = client.get_metric_history(parent.info.run_id, "round/eval/score/value")
    assert [m.value for m in history] == pytest.approx(
        [r["eval"]["score"]["value"] for r in rounds]
    )
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")  # fmt: skip
    assert sorted(run.info.run_name for run in children) == ["round-0", "round-1"]
