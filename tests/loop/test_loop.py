"""`prefopt loop` on a tiny model with a verifier as the oracle: rounds run end to end, prompts
chosen once are never drawn again, and a loop stopped before any stage of a round and resumed
reaches exactly the weights and rounds.jsonl of an uninterrupted run."""

import json
import shutil

import pytest
import yaml
from safetensors.torch import load_file

from prefopt.data import DataError
from prefopt.loop import LoopConfig, loop
from prefopt.train.checkpoint import latest_checkpoint
from tiny import write_jsonl

VERIFIER = "def short(prompt, completion, record):\n    return -len(completion)\n"
# each stage's outputs, in order
STAGES = {
    "candidates": ["candidates.json"],
    "generate": ["candidates.jsonl", "generations.jsonl", "generations.done"],
    "acquire": ["acquisition.json"],
    "label": ["chosen.jsonl", "asked.json", "labels.left_out.json", "labels.jsonl"],
    "train": ["data.jsonl", "train"],
    "evaluate": ["eval.json", "eval.full.json", "eval.full.model.jsonl"],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loop")
    (folder / "verify.py").write_text(VERIFIER)
    pool = write_jsonl(
        folder / "pool.jsonl", [{"prompt": f"question {i}: apple"} for i in range(40)]
    )
    heldout = write_jsonl(
        folder / "heldout.jsonl", [{"prompt": f"held out {i}: river"} for i in range(4)]
    )
    return folder, pool, heldout


def settings(tiny_model, setup, out, **overrides):
    folder, pool, heldout = setup
    return LoopConfig(
        **{
            "model": str(tiny_model),
            "prompts": str(pool),
            "heldout": str(heldout),
            "oracle": "verifier",
            "oracle_options": {"function": f"{folder / 'verify.py'}:short"},
            "rounds": 2,
            "labels_per_round": 4,
            "candidates_per_label": 2,
            "k": 3,
            "max_new_tokens": 6,
            "train": {
                "loss": "plackett_luce",
                "lora": True,
                "learning_rate": 1e-3,
                "max_steps": 2,
                "batch_size": 2,
            },
            "precision": "fp32",
            "output_dir": str(out),
            **overrides,
        }
    )


def without_timings(records):
    timings = {"seconds", "overhead_seconds", "overhead_share"}
    return [
        {key: value for key, value in record.items() if key not in timings} for record in records
    ]


def final_weights(out):
    return load_file(latest_checkpoint(out / "round-1" / "train") / "trained.safetensors")


@pytest.fixture(scope="module")
def whole(tiny_model, setup):
    out = setup[0] / "whole"
    return out, loop(settings(tiny_model, setup, out))


def test_rounds_run_end_to_end(whole):
    out, records = whole
    assert [r["round"] for r in records] == [0, 1] and [r["labels_total"] for r in records] == [
        4,
        8,
    ]
    assert set(records[0]["seconds"]) == {
        "candidates",
        "generate",
        "acquire",
        "label",
        "train",
        "evaluate",
    }
    assert "score" in records[1]["eval"] and "win_rate" in records[1]["eval"]
    assert json.loads((out / "rounds.jsonl").read_text().splitlines()[1])["round"] == 1
    asked = []
    for n in range(2):
        keys = json.loads((out / f"round-{n}" / "candidates.json").read_text())
        asked += [keys[i] for i in json.loads((out / f"round-{n}" / "asked.json").read_text())]
    assert len(asked) == len(set(asked)) >= 8  # a prompt is asked about once


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_stopping_before_a_stage_and_resuming_reaches_the_same_state(
    tiny_model, setup, whole, stage, tmp_path
):
    out, records = whole
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    round_folder = copy / "round-1"
    names = list(STAGES)
    for later in names[names.index(stage) :]:  # the stages from this one on never happened
        for output in STAGES[later]:
            target = round_folder / output
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    (copy / "rounds.jsonl").write_text(
        (copy / "rounds.jsonl").read_text().splitlines(keepends=True)[0]
    )
    resumed = loop(settings(tiny_model, setup, copy), resume=True)
    assert without_timings(resumed) == without_timings(records)
    for name, tensor in final_weights(copy).items():
        assert tensor.equal(final_weights(out)[name]), name


def test_an_existing_loop_is_not_overwritten_and_an_exhausted_pool_is_named(
    tiny_model, setup, whole, tmp_path
):
    out, _ = whole
    with pytest.raises(DataError, match="already holds a loop: add --resume"):
        loop(settings(tiny_model, setup, out))
    small = write_jsonl(tmp_path / "small.jsonl", [{"prompt": f"q {i}"} for i in range(4)])
    with pytest.raises(DataError, match="pool is exhausted after round 1"):
        loop(settings(tiny_model, setup, tmp_path / "run", prompts=str(small), heldout=None))


def test_settings_the_loop_owns_are_refused():
    with pytest.raises(ValueError, match="output_dir are set by the loop"):
        LoopConfig(prompts="p.jsonl", train={"output_dir": "x"})
    with pytest.raises(ValueError, match="report_to are set by the loop"):
        LoopConfig(prompts="p.jsonl", train={"report_to": ["wandb"]})
    with pytest.raises(ValueError, match="learning_rat: unknown setting"):
        LoopConfig(prompts="p.jsonl", train={"learning_rat": 1})


def test_a_loops_report_overlays_loops(whole, tmp_path):
    from prefopt.report import report

    out, _ = whole
    page = report(out, tmp_path / "report.html", compare=[out]).read_text()
    assert "Held-out quality against labels used" in page and "Where a round" in page
    assert page.count('src="data:image/png;base64,') == 2


def test_lists_the_oracle_ties_on_are_replaced_by_the_next_ones(tiny_model, setup, tmp_path):
    """A verifier that ties every list but those of some prompts: the label stage asks about the
    reserve, in acquisition order, until the budget is labelled or the candidates run out."""
    folder = setup[0]
    picky = folder / "picky.py"
    picky.write_text(
        "def picky(prompt, completion, record):\n"
        "    return -len(completion) if prompt.endswith(('1: apple', '3: apple', '5: apple', "
        "'7: apple', '9: apple')) else 0\n"
    )
    records = loop(
        settings(
            tiny_model,
            setup,
            tmp_path / "run",
            rounds=1,
            heldout=None,
            candidates_per_label=4,
            oracle_options={"function": f"{picky}:picky"},
        )
    )
    asked = json.loads((tmp_path / "run" / "round-0" / "asked.json").read_text())
    labelled = records[0]["labels"]
    # the budget was labelled: ties were replaced from the reserve
    assert labelled == 4 and len(asked) > 4
    assert records[0]["left_out"]["all completions tie"] == len(asked) - labelled


def test_models_stay_in_memory_between_stages_and_rounds(
    tiny_model, setup, whole, tmp_path, monkeypatch
):
    """Two rounds read one model from disk: the initial one, once. Every later stage gets a copy
    from memory, the policies trained by the rounds included (kept as they were saved), and the
    loop ends exactly where the loop of the fixture (same process, same settings) ended."""
    from transformers import AutoModelForCausalLM

    reads = []
    original = AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(
        AutoModelForCausalLM,
        "from_pretrained",
        classmethod(
            lambda cls, path, *a, **k: reads.append(str(path)) or original(cls, path, *a, **k)
        ),
    )
    out = tmp_path / "run"
    records = loop(settings(tiny_model, setup, out))
    assert reads == [str(tiny_model)]
    assert without_timings(records) == without_timings(whole[1])
    for name, tensor in final_weights(out).items():
        assert tensor.equal(final_weights(whole[0])[name]), name
    shares = [record["overhead_share"] for record in records]
    assert all(0 < share < 1 for share in shares)
    assert set(records[0]["overhead_seconds"]) == set(records[0]["seconds"])


class Killed(BaseException):
    """Stands for the process being killed: nothing after it runs, no handler catches it."""


def _nothing(original, *args, **kwargs):
    raise Killed


def _half_the_prompts(original, model, tokenizer, prompts, settings, **kwargs):
    # written as it went
    original(model, tokenizer, prompts[: len(prompts) // 2], settings, **kwargs)
    raise Killed


def _one_list(original, oracle, lists, cache, **kwargs):
    original(oracle, lists[:1], cache, **kwargs)  # one answer in the oracle's cache
    raise Killed


def _kill(monkeypatch, target, name: str, after: int, partial=_nothing):
    """target.name runs as usual `after` times, then does what `partial` does (part of its work)
    and is killed."""
    original, calls = getattr(target, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return (partial if len(calls) == after + 1 else lambda f, *a, **k: f(*a, **k))(
            original, *args, **kwargs
        )

    monkeypatch.setattr(target, name, wrapper)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["generate", "acquire", "label", "train", "evaluate"])
def test_a_loop_killed_inside_any_stage_resumes_to_the_same_state(
    tiny_model, setup, whole, stage, tmp_path, monkeypatch
):
    """Killed in the middle of a stage of round 1 (half the prompts sampled and written, a half
    written line after them; one list judged; training after a checkpoint; the held-out answers
    generated but not judged), `--resume` reaches the rounds.jsonl and the final weights of the
    run that was never stopped."""
    import importlib

    import prefopt.acquire.strategies as strategies
    import prefopt.evaluate.run as evaluate_run
    import prefopt.generate.run as generate_run
    import prefopt.train.loop as train_loop

    # the package's `score` is its function
    score = importlib.import_module("prefopt.oracles.score")

    # (where, what, calls before round 1's first): sampling runs for the initial answers, round 0's
    # candidates and its held-out answers; one acquisition, one labelling, 2 steps (round 1 killed after its
    # first, checkpointed) and one win rate a round
    where = {
        "generate": (generate_run, "sample", 3, _half_the_prompts),
        "acquire": (strategies.Acquisition, "select", 1),
        "label": (score, "judge", 1, _one_list),
        "train": (train_loop._Run, "step", 3),
        "evaluate": (evaluate_run, "_win_rate", 1),
    }[stage]
    _kill(monkeypatch, *where)
    out = tmp_path / "run"
    train = {
        "loss": "plackett_luce",
        "lora": True,
        "learning_rate": 1e-3,
        "max_steps": 2,
        "batch_size": 2,
        "save_every": 1,
    }
    with pytest.raises(Killed):
        loop(settings(tiny_model, setup, out, train=train))
    monkeypatch.undo()
    round_1 = out / "round-1"
    if stage == "generate":
        written = (round_1 / "generations.jsonl").read_text().splitlines()
        assert 0 < len(written) < 8 and not (round_1 / "generations.done").exists()
        with (round_1 / "generations.jsonl").open("a") as handle:
            handle.write('{"prompt": "question 3: app')  # killed while writing a line
    if stage == "train":
        assert (
            latest_checkpoint(round_1 / "train").name == "step-1"
            and not (round_1 / "train" / "model").exists()
        )
    resumed = loop(settings(tiny_model, setup, out, train=train), resume=True)
    assert without_timings(resumed) == without_timings(whole[1])
    for name, tensor in final_weights(out).items():
        assert tensor.equal(final_weights(whole[0])[name]), name


def test_dnos_pair_rule_trains_on_best_against_worst_with_a_margin(tiny_model, setup, tmp_path):
    """pair_rule best_worst: every labelled list becomes (its best, its worst) when their score gap
    (here, the verifier's length difference) reaches pair_margin; the others are counted."""
    out = tmp_path / "run"
    records = loop(
        settings(
            tiny_model,
            setup,
            out,
            rounds=1,
            pair_rule="best_worst",
            pair_margin=8.0,
            training="continue",
        )
    )
    folder = out / "round-0"
    labels = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines()]
    wide = [row for row in labels if max(row["scores"]) - min(row["scores"]) >= 8.0]
    assert records[0]["pairs"] == {
        "lists": len(labels),
        "pairs": len(wide),
        "below_margin": len(labels) - len(wide),
    }
    assert 0 < len(wide) < len(labels)  # gaps 5, 7, 9 and 10 here: the margin keeps two
    pairs = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    for row, pair in zip(wide, pairs, strict=True):
        shortest, longest = min(row["completions"], key=len), max(row["completions"], key=len)
        assert (pair["chosen"], pair["rejected"]) == (shortest, longest)
    with pytest.raises(ValueError, match="pair_margin filters the pairs of pair_rule: best_worst"):
        settings(tiny_model, setup, out, pair_margin=1.0)


def test_inpo_rounds_read_the_previous_policy_and_the_initial_model(tiny_model, setup, tmp_path):
    """INPO in the loop: each round's reference is the previous round's policy (training: continue)
    and its anchor the initial model, computed beside the reference."""
    inpo = {
        "loss": "inpo",
        "loss_params": {"inpo": {"eta": 1.0, "tau": 0.1}},
        "lora": True,
        "learning_rate": 1e-3,
        "max_steps": 2,
        "batch_size": 2,
    }
    out = tmp_path / "run"
    records = loop(settings(tiny_model, setup, out, training="continue", train=inpo))
    assert len(records) == 2 and (out / "round-1" / "train" / "anchor_logps.pt").exists()
    saved = yaml.safe_load((out / "round-1" / "train" / "config.yaml").read_text())
    assert saved["anchor_model"] == str(tiny_model) and saved["model"] == str(
        out / "round-0" / "train" / "merged"
    )
    with pytest.raises(ValueError, match="set training: continue"):
        settings(tiny_model, setup, out, train=inpo)


def test_optune_samples_again_only_the_lowest_scored_lists(tiny_model, setup, tmp_path):
    """regenerate: ½ — round 1's candidates are round 0's labelled lists; the half the verifier
    scored lowest are sampled again from the new policy, the others keep their answers."""
    out = tmp_path / "run"
    records = loop(settings(tiny_model, setup, out, regenerate=0.5, training="continue"))
    before, after = out / "round-0", out / "round-1"
    asked = json.loads((before / "asked.json").read_text())
    keys = json.loads((before / "candidates.json").read_text())
    assert json.loads((after / "candidates.json").read_text()) == [keys[i] for i in asked]
    mean = {
        row["meta"]["index"]: sum(row["scores"]) / len(row["scores"])
        for row in (json.loads(line) for line in (before / "labels.jsonl").read_text().splitlines())
    }
    lowest = sorted(range(len(asked)), key=lambda j: (mean.get(asked[j], float("-inf")), j))[
        : len(asked) // 2
    ]
    assert (
        json.loads((after / "regenerate.json").read_text()) == sorted(lowest)
        and records[1]["regenerated"] == 2
    )
    old = [json.loads(line) for line in (before / "generations.jsonl").read_text().splitlines()]
    new = [json.loads(line) for line in (after / "generations.jsonl").read_text().splitlines()]
    assert [row["meta"]["index"] for row in new] == list(range(len(asked)))
    for j, row in enumerate(new):
        if j in lowest:
            assert "kept_from_round" not in row["meta"]
        else:
            assert (
                row["completions"] == old[asked[j]]["completions"]
                and row["meta"]["kept_from_round"] == 0
            )
    # only these were sampled
    assert len((after / "regenerated.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("oracle", ["reward_model", "judge"])
def test_the_loop_runs_with_a_reward_model_and_with_a_judge(tiny_model, setup, tmp_path, oracle):
    """Every oracle kind labels the loop's lists: a reward model (rewards of each completion), and
    a local judge (each pair in both orders; a flip is a tie), here a tiny model built to answer A
    or B by the prompt; the verifier and people have tests of their own."""
    from tiny import build_tiny_judge, build_tiny_reward_model

    built = (
        build_tiny_reward_model(tmp_path / "rm", tiny_model)
        if oracle == "reward_model"
        else build_tiny_judge(tmp_path / "judge", tiny_model)
    )
    out = tmp_path / "run"
    records = loop(
        settings(
            tiny_model,
            setup,
            out,
            rounds=1,
            oracle=oracle,
            oracle_options={
                "model": str(built),
                **({"precision": "fp32"} if oracle == "reward_model" else {}),
            },
            eval_oracle="verifier",
            eval_oracle_options={"function": f"{setup[0] / 'verify.py'}:short"},
        )
    )
    labels = [
        json.loads(line) for line in (out / "round-0" / "labels.jsonl").read_text().splitlines()
    ]
    assert records[0]["labels"] == len(labels) > 0
    # each prefers something
    assert all(len(set(row.get("scores", row.get("ranks", [])))) > 1 for row in labels)
    assert "score" in records[0]["eval"]
