"""`backend: vllm`, run against the stand-in for vLLM in tests/stand_ins (vLLM needs a GPU): what
prefopt hands the engine (the model's folder, the sampling parameters, the policy's merged weights
under their transformers names after each update) and what it does with the engine's answers
(each token's log-prob lined up with the trainer's, the importance weights TRL applies)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.generate import GenerateConfig, generate
from prefopt.rl import RLConfig, rl
from tiny import write_jsonl

STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"


@pytest.fixture
def vllm(monkeypatch):
    """The stand-in as `vllm`, with its record of engines emptied."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    vllm.LLM.made.clear()
    return vllm


@pytest.fixture
def prompts(tmp_path):
    (tmp_path / "verify.py").write_text(
        "def count_a(prompt, completion, record):\n    return completion.count('a') / 10\n"
    )
    rows = [{"prompt": f"say {i}: apple"} for i in range(4)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows), tmp_path / "verify.py"


def test_rl_pushes_the_merged_policy_after_each_update_and_corrects_by_its_log_probs(
    vllm, tiny_model, prompts, tmp_path
):
    data, verifier = prompts
    out = tmp_path / "run"
    rl(RLConfig(model=str(tiny_model), prompts=str(data), heldout=str(data), output_dir=str(out),
                oracle_options={"function": f"{verifier}:count_a"}, k=4, prompts_per_step=2,
                max_new_tokens=6, max_steps=2, learning_rate=5e-2, precision="fp32",
                backend="vllm", vllm_importance_sampling="token_truncate"))  # fmt: skip
    (engine,) = vllm.LLM.made  # one engine, colocated, for the whole run
    assert engine.options == {"model": str(tiny_model), "seed": 0, "dtype": "auto",
                              "gpu_memory_utilization": 0.3}  # fmt: skip
    sampled = [call for call in engine.calls if call["n"] == 4]
    assert len(sampled) == 2 and all(c["logprobs"] == 0 and c["max_tokens"] == 6 for c in sampled)
    # weights pushed before sampling with an updated policy: step 2's samples, the final eval
    assert len(engine.pushes) == engine.resets == 2
    final = load_file(out / "merged" / "model.safetensors")
    pushed = engine.pushes[-1]
    assert set(pushed) == set(final) - {"lm_head.weight"} or set(pushed) == set(final)
    for name, tensor in pushed.items():
        torch.testing.assert_close(tensor, final[name], rtol=1e-5, atol=1e-6, msg=name)
    # the stand-in's float32 log-probs are the trainer's: each token's weight is 1 but for rounding
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if line["split"] == "train"]
    for step in steps:
        assert step["sampling/importance_sampling_ratio/mean"] == pytest.approx(1.0, abs=1e-4)
        assert step["sampling/importance_sampling_ratio/max"] == pytest.approx(1.0, abs=1e-3)


def test_a_disco_run_on_vllm_needs_the_correction_off(tiny_model):
    with pytest.raises(ValueError, match="disco has no per-token ratio"):
        RLConfig(model=str(tiny_model), prompts="p.jsonl", objective="disco", backend="vllm")
    RLConfig(model=str(tiny_model), prompts="p.jsonl", objective="disco", backend="vllm",
             vllm_importance_sampling="none")  # fmt: skip


def test_generate_hands_vllm_the_prompts_and_k_and_keeps_its_answers(
    vllm, tiny_model, prompts, tmp_path
):
    data, _ = prompts
    out = tmp_path / "answers.jsonl"
    generate(GenerateConfig(model=str(tiny_model), prompts=str(data), out=str(out), k=3,
                            max_new_tokens=5, seed=7, backend="vllm"))  # fmt: skip
    (engine,) = vllm.LLM.made
    assert engine.options["model"] == str(tiny_model) and engine.options["seed"] == 7
    (call,) = engine.calls
    assert call["n"] == 3 and call["seed"] == 7 and call["max_tokens"] == 5
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(len(row["completions"]) == 3 for row in rows)
    assert all(len(lengths) == 3 and max(lengths) <= 5 for lengths in
               (row["meta"]["lengths"] for row in rows))  # fmt: skip


def test_a_loop_samples_each_round_from_the_policy_the_round_before_trained(
    vllm, tiny_model, prompts, tmp_path
):
    from prefopt.loop import LoopConfig, loop

    data, _ = prompts
    (tmp_path / "short.py").write_text("def short(prompt, completion, record):\n"
                                       "    return -len(completion)\n")  # fmt: skip
    out = tmp_path / "loop"
    loop(LoopConfig(model=str(tiny_model), prompts=str(data), heldout=str(data),
                    oracle="verifier", oracle_options={"function": f"{tmp_path}/short.py:short"},
                    rounds=2, labels_per_round=1, candidates_per_label=2, k=2, max_new_tokens=4,
                    train={"loss": "plackett_luce", "max_steps": 1, "batch_size": 1},
                    precision="fp32", output_dir=str(out), backend="vllm"))  # fmt: skip
    sampled = [Path(engine.options["model"]) for engine in vllm.LLM.made]
    # held-out answers of the initial model, round 0's lists, its held-out answers, round 1's, …
    assert Path(tiny_model) in sampled
    assert out / "round-0" / "train" / "merged" in sampled
    assert all(len(call) and call["n"] in (1, 2) for e in vllm.LLM.made for call in e.calls)
