"""The benchmark scripts refuse bad input with a message, not a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real processes: make test-fast skips them

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.mark.parametrize("model", ["missing.gguf", "missing-folder"])
def test_vs_trl_names_a_missing_model(tmp_path, model):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "vs_trl.py"),
            "--quick",
            "--model",
            str(tmp_path / model),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"--model {tmp_path / model}:" in done.stderr and "Traceback" not in done.stderr, (
        done.stderr
    )


def test_attention_benchmark_compares_both_kernels_and_names_a_bad_call():
    script = str(ROOT / "benchmarks" / "attention.py")
    done = subprocess.run(
        [sys.executable, script, "--calls", "20x20", "8x30", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [row[:2] for row in rows if row[0] == "8x30"] == [
        ["8x30", "sdpa"],
        ["8x30", "matmuls"],
        ["8x30", "speedup"],
    ]
    errors = [float(e) for row in rows if row[:2] == ["8x30", "matmuls"] for e in row[4::2]]
    assert len(errors) == 4 and max(errors) < 0.01
    done = subprocess.run(
        [sys.executable, script, "--calls", "30x8"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "--calls 30x8: expected QUERIESxKEYS" in done.stderr
    assert "Traceback" not in done.stderr


def test_optimizer_benchmark_times_both_updates_and_checks_they_agree(tiny_model):
    script = str(ROOT / "benchmarks" / "optimizer.py")
    done = subprocess.run(
        [sys.executable, script, "--model", str(tiny_model), "--steps", "2", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [(row[0], row[-4]) for row in rows] == [
        ("full", "loop"),
        ("full", "fused"),
        ("lora", "loop"),
        ("lora", "fused"),
    ]
    assert all(float(row[-3]) > 0 and float(row[-2]) > 0 and float(row[-1]) < 1e-6 for row in rows)
    done = subprocess.run(
        [sys.executable, script, "--steps", "1"], capture_output=True, text=True, timeout=120
    )
    assert (
        done.returncode != 0
        and "--steps 1: needs at least 2" in done.stderr
        and "Traceback" not in done.stderr
    )


def test_required_flops_count_linear_layers_head_and_the_attention_pairs_the_work_needs(tiny_model):
    import importlib.util

    from transformers import AutoConfig

    spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
    vs_trl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs_trl)
    vocab = AutoConfig.from_pretrained(tiny_model).vocab_size
    # tiny Llama: hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 key-value heads
    body = 2 * 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)  # forward FLOPs a token
    head = 2 * 64 * vocab
    # prompt of 3, completions of 2 and 1: the prompt sees 1 + 2 + 3 keys, the first completion
    # 3 + 1 and 3 + 2, the second 3 + 1: 19 (query, key) pairs
    attention = 4 * 16 * 4 * 2 * 19
    for lora, passes in ((True, 3), (False, 4)):
        flops = vs_trl.required_flops(str(tiny_model), [(3, [2, 1])], lora)
        assert flops["without_attention"] == passes * (body * 6 + head * 3)
        assert flops["total"] == flops["without_attention"] + 4 * attention


def test_active_against_random_runs_every_strategy_and_seed_and_resumes(tiny_model, tmp_path):
    script = str(ROOT / "benchmarks" / "active_vs_random.py")
    command = [
        sys.executable,
        script,
        "--model",
        str(tiny_model),
        "--seeds",
        "2",
        "--rounds",
        "1",
        "--labels",
        "2",
        "--heldout",
        "3",
        "--train-prompts",
        "12",
        "--max-new-tokens",
        "6",
        "--strategies",
        "random",
        "certainty",
        "--out",
        str(tmp_path / "runs"),
        "--json",
        str(tmp_path / "result.json"),
        "--plot",
        str(tmp_path / "curves.png"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert [run["seed"] for run in result["runs"]["certainty"]] == [0, 1]
    curve = result["summary"]["curves"]["random"]
    assert curve["labels"][0] == 0 and len(curve["score"]) == 2  # the initial model, then one round
    assert "random's final held-out score" in done.stdout and "certainty:" in done.stdout
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # every run is read, none redone
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert (
        again.returncode == 0
        and json.loads((tmp_path / "result.json").read_text())["runs"] == result["runs"]
    )
    done = subprocess.run(
        [sys.executable, script, "--strategies", "entropy"], capture_output=True, text=True
    )
    assert (
        done.returncode != 0
        and "random is the baseline" in done.stderr
        and "Traceback" not in done.stderr
    )


def test_step_profile_splits_only_its_step_into_gemms_attention_and_the_rest():
    import importlib.util
    from types import SimpleNamespace

    import torch

    spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
    vs_trl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs_trl)
    profile = vs_trl.StepProfile(2, lists=4)
    on_step = vs_trl.prefopt_step_profile(profile)
    q = torch.randn(1, 2, 64, 16)

    def work(products: int) -> None:
        for _ in range(products):
            torch.randn(256, 256) @ torch.randn(256, 256)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        torch.randn(1000).exp_()

    work(1)  # step 1: not profiled
    on_step(SimpleNamespace(step=1), {})
    assert profile.result() is None
    work(20)  # step 2
    on_step(SimpleNamespace(step=2), {})
    split = profile.result()
    assert split["step"] == 2 and split["lists"] == 4
    assert split["gemm_s"] > 0 and split["attention_s"] > 0 and split["other_s"] >= 0
    assert split["gemm_s"] + split["attention_s"] + split["other_s"] == pytest.approx(
        split["step_s"]
    )
    work(1)  # step 3 leaves step 2's split as it was
    on_step(SimpleNamespace(step=3), {})
    assert profile.result() == split
    late = vs_trl.StepProfile(5, lists=4)  # a step past the run's last: begun, closed, no result
    vs_trl.prefopt_step_profile(late)(SimpleNamespace(step=4), {})
    late.close()
    assert late.result() is None and late.profiler is None


def test_rl_against_trl_runs_both_and_compares_them(tiny_model, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "rl_vs_trl.py"), "--quick", "--model",
               str(tiny_model), "--max-new-tokens", "6", "--workloads", "demo:4,long:2", "--json",
               str(tmp_path / "rl.json"), "--trl-completions-per-forward", "4",
               "--max-tokens-per-forward", "64"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prefopt" in done.stdout and "faster a step" in done.stdout
    results = json.loads((tmp_path / "rl.json").read_text())["results"]
    assert list(results) == ["demo:4", "long:2"]
    for result in results.values():
        for tool in ("prefopt", "trl"):
            assert len(result[tool]["seconds_per_step"]) == 2 and len(result[tool]["reward"]) == 2


def test_sandbox_benchmark_scores_both_designs_alike(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "sandbox.py"), "--completions", "4",
               "--json", str(tmp_path / "sandbox.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "sandbox.json").read_text())["results"]
    assert {r["tests_passed"] for r in results.values()} == {10}  # 2 right completions × 5 tests


@pytest.mark.slow
def test_rl_quality_trains_each_arm_and_measures_its_final_policy(tiny_model, tmp_path):
    """Each arm at a budget of one step (the tiny model), measured as the demo measures."""
    command = [sys.executable, str(ROOT / "benchmarks" / "rl_quality.py"), "--arms", "grpo,trl",
               "--steps", "1", "--model", str(tiny_model), "--json", str(tmp_path / "q.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["initial"]["heldout"]["n"] == 60 and result["initial"]["unseen"]["n"] == 40
    for arm in ("grpo", "trl"):
        assert 0 <= result["results"][arm]["heldout"]["value"] <= 1
    assert "held out" in done.stdout and "initial" in done.stdout


def test_generate_benchmark_runs_each_workload_on_every_backend(tiny_model, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "generate.py"), "--quick", "--model",
               str(tiny_model), "--workloads", "rl_step,eval", "--json", str(tmp_path / "g.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "g.json").read_text())["results"]
    assert [row["workload"] for row in rows] == ["rl_step", "eval"]
    for row in rows:
        k = 8 if row["workload"] == "rl_step" else 1
        assert row["prefopt"]["tokens"] == 4 * k * 8  # every answer runs to its 8 tokens
        for backend in ("transformers", "transformers_static", "transformers_compiled"):
            # (less the tiny model's pads)
            assert 0.8 * 4 * k * 8 <= row[backend]["tokens"] <= 4 * k * 8
        assert row["prefopt"]["roofline_seconds"] > 0 and 0 < row["reached"]
        assert row["transformers_compiled"]["compiled_graphs"] > 0
        assert row["transformers_static"]["compiled_graphs"] == 0


def test_decode_profile_splits_a_step_and_prints_the_roofline(tiny_model, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "decode_profile.py"), "--model",
               str(tiny_model), "--batches", "8", "--steps", "2", "--json", str(tmp_path / "p.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "p.json").read_text())["results"]
    assert [(row["sequences"], row["precision"]) for row in rows] == [(8, "fp32"), (8, "bf16")]
    for row in rows:
        seconds = row["seconds"]
        assert seconds["step"] >= seconds["forward"] > 0 and row["flops"] > 0 < row["bytes"]


def test_optimizers_benchmark_tunes_each_optimizer_and_times_it_against_adamw(tiny_model, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import toy_rows, write_jsonl

    data = write_jsonl(tmp_path / "lists.jsonl", toy_rows(40, seed=2, k=4))
    command = [sys.executable, str(ROOT / "benchmarks" / "optimizers.py"), "--model", str(tiny_model),
               "--data", str(data), "--optimizers", "adamw,muon", "--trials", "2", "--steps", "3",
               "--json", str(tmp_path / "o.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "o.json").read_text())["results"]
    for name in ("adamw", "muon"):
        assert len(results[name]["trials"]) == 2 and results[name]["seconds_per_step"] > 0
        assert 0 <= results[name]["ranking_accuracy"] <= 1
    assert "1.00x" in done.stdout  # AdamW against itself
    # the demo's loop at the tuned rate, the studies read back from the results file
    command = [sys.executable, str(ROOT / "benchmarks" / "optimizers.py"), "--model", str(tiny_model),
               "--optimizers", "muon", "--tuned", str(tmp_path / "o.json"), "--demo",
               "--json", str(tmp_path / "d.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    muon = json.loads((tmp_path / "d.json").read_text())["results"]["muon"]
    assert muon["trials"] == results["muon"]["trials"]  # no new study
    assert muon["demo"]["before"]["n"] == muon["demo"]["after"]["n"] == 60


def test_the_gpu_check_asks_only_for_what_the_benchmarks_take_and_stops_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh cannot run here (no GPU): every option it passes is one the script
    it calls accepts, it stops with a message where no GPU is visible, and its summary reads the
    JSON each benchmark writes (the committed results stand in for a GPU run's)."""
    import re
    import shutil

    script = (BENCHMARKS / "gpu_check.sh").read_text()
    for name, options in re.findall(r'"\$here/(\w+\.py)"((?:\\\n|[^\n])*)', script):
        accepted = subprocess.run([sys.executable, str(BENCHMARKS / name), "--help"],
                                  capture_output=True, text=True, check=True).stdout  # fmt: skip
        for option in re.findall(r"(--[a-z][a-z-]+)", options):
            assert option in accepted, f"{name} takes no {option}"
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(tmp_path / "out")],
                            capture_output=True, text=True, env=os.environ | {
                                "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert result.returncode == 1 and "no CUDA GPU visible" in result.stdout
    for committed, name in (("results-h100-bf16-full.json", "vs_trl.json"),
                            ("results-rl-vs-trl-bf16.json", "rl_vs_trl.json"),
                            ("results-generate.json", "generate.json")):  # fmt: skip
        shutil.copy(BENCHMARKS / committed, tmp_path / name)
    lines = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_summary.py"), str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert [line.split()[0] for line in lines] == ["train"] * 3 + ["rl"] * 3 + ["generate"] * 4
    assert "MFU prefopt" in lines[0] and "TRL's speed a step" in lines[3]
