"""`prefopt generate` end to end: a prompts file in, one line per prompt out, valid items for the
label app; resume without redoing or duplicating a prompt; bad input named."""

import json

import pytest

from prefopt.data import DataError, load_records
from prefopt.generate import GenerateConfig, generate
from tiny import write_jsonl

PROMPTS = [{"prompt": f"question {i}: apple river"} for i in range(5)] + [
    {"prompt": [{"role": "user", "content": "say hi"}]},
    # preference data: its prompt again
    {"prompt": "question 0: apple river", "chosen": "a", "rejected": "b"},
]


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)


def settings(tiny_model, prompts_file, out, **overrides):
    return GenerateConfig(
        **{
            "model": str(tiny_model),
            "prompts": str(prompts_file),
            "out": str(out),
            "k": 3,
            "max_new_tokens": 6,
            "precision": "fp32",
            "batch_size": 2,
            **overrides,
        }
    )


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_distinct_prompt_with_its_metadata(tiny_model, prompts_file, tmp_path):
    result = generate(settings(tiny_model, prompts_file, tmp_path / "out.jsonl"))
    rows = lines(tmp_path / "out.jsonl")
    assert result.generated == len(rows) == 6 and result.tokens == sum(
        sum(r["meta"]["lengths"]) for r in rows
    )
    assert [r["meta"]["index"] for r in rows] == list(range(6))  # in the prompts' order once done
    chat = next(r for r in rows if r["meta"]["index"] == 5)
    assert chat["prompt"] == [{"role": "user", "content": "say hi"}]
    for row in rows:
        meta = row["meta"]
        assert len(row["completions"]) == len(meta["logps"]) == len(meta["finished"]) == 3
        assert meta["sampling"]["k"] == 3 and meta["seed"] == 0 and meta["model"] == str(tiny_model)
    items = load_records(
        tmp_path / "out.jsonl", require_scores=False
    ).records  # valid label-app items
    assert len(items) == 6


def test_resume_continues_without_redoing_or_duplicating(tiny_model, prompts_file, tmp_path):
    whole = tmp_path / "whole.jsonl"
    generate(settings(tiny_model, prompts_file, whole))
    cut = tmp_path / "cut.jsonl"
    text = whole.read_text().splitlines(keepends=True)
    cut.write_text("".join(text[:2]) + text[2][: len(text[2]) // 2])  # killed while writing line 3
    with pytest.raises(DataError, match="already exists: add --resume"):
        generate(settings(tiny_model, prompts_file, cut))
    result = generate(settings(tiny_model, prompts_file, cut), resume=True)
    assert (result.already_done, result.generated) == (2, 4)
    by_index = lambda path: sorted(lines(path), key=lambda r: r["meta"]["index"])
    assert by_index(cut) == by_index(whole)
    with pytest.raises(DataError, match="written with other settings"):
        generate(settings(tiny_model, prompts_file, cut, temperature=0.5), resume=True)


def test_a_bad_prompt_row_is_named_before_any_generation(tiny_model, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"prompt": ""}])
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: .*prompt"):
        generate(settings(tiny_model, bad, tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()


def test_a_trained_adapter_folder_generates_from_its_merged_model(
    tiny_model, prompts_file, tmp_path
):
    from prefopt.train import train
    from tiny import tiny_train_config, toy_rows

    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(16, seed=3))
    train(tiny_train_config(tiny_model, data, tmp_path / "run", loss="dpo", lora=True, max_steps=2))
    result = generate(
        settings(
            tiny_model,
            prompts_file,
            tmp_path / "out.jsonl",
            model=str(tmp_path / "run"),
            temperature=0,
        )
    )
    assert result.generated == 6


@pytest.mark.slow
def test_the_command_line(prefopt_cli, tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out.jsonl"
    result = prefopt_cli(
        "generate",
        "--model",
        tiny_model,
        "--prompts",
        prompts_file,
        "--k",
        2,
        "--out",
        out,
        "--max-new-tokens",
        4,
        "--precision",
        "fp32",
        "--stop",
        "zz",
        "--seed",
        3,
    )
    assert result.returncode == 0, result.stderr
    assert "6 prompts × 2 completions" in result.stdout and len(lines(out)) == 6
    again = prefopt_cli("generate", "--model", tiny_model, "--prompts", prompts_file, "--out", out)
    assert (
        again.returncode == 1
        and "already exists: add --resume" in again.stderr
        and "Traceback" not in again.stderr
    )
    bad = prefopt_cli(
        "generate", "--prompts", prompts_file, "--k", 0, "--out", tmp_path / "x.jsonl"
    )
    assert bad.returncode == 2 and "k: Input should be greater than or equal to 1" in bad.stderr


def test_the_vllm_backend_says_what_it_needs_when_missing(tiny_model, prompts_file, tmp_path):
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="backend vllm needs the vllm package"):
        generate(settings(tiny_model, prompts_file, tmp_path / "out.jsonl", backend="vllm"))
