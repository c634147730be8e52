"""The speed and memory machinery changes no number: step-0 rewards are exactly zero, cached
reference log-probs equal fresh ones, the cache misses when anything it depends on changes, and a
run with every optimization on matches a run with all of them off."""

import ctypes
import dataclasses
import json
import platform
import resource
import sys

import pytest
import torch

from prefopt.engine.settings import ALL_OFF, EngineSettings
from prefopt.train import train
from tiny import crash_at, tiny_train_config, toy_rows, write_jsonl


@pytest.fixture(scope="module")
def lists_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "lists.jsonl", toy_rows(32, seed=4, k=4))


def config(tiny_model, data, out, **overrides):
    return tiny_train_config(
        tiny_model,
        data,
        out,
        **{"loss": "plackett_luce", "lora": True, "max_steps": 3, **overrides},
    )


def first_step(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == "train"][0]


@pytest.mark.parametrize("share_prompt", [True, False], ids=["packed", "rows"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_step_zero_rewards_are_exactly_zero(tiny_model, lists_file, tmp_path, share_prompt, lora):
    result = train(
        config(
            tiny_model,
            lists_file,
            tmp_path / "run",
            share_prompt=share_prompt,
            lora=lora,
            max_steps=1,
        )
    )
    step = first_step(tmp_path / "run")
    assert (
        step["reward_margin"] == 0.0
        and step["rewards/chosen"] == 0.0
        and step["rewards/rejected"] == 0.0
    )
    assert result.eval_start["reward_margin"] == 0.0


def test_step_zero_rewards_are_exactly_zero_in_bf16_through_matmul_attention(
    tiny_model, lists_file, tmp_path, monkeypatch
):
    """bf16 autocast with every attention call of the packed layout through the matmul kernel
    (chosen on CPUs with bf16 matrix instructions for calls of 80 queries and 128 keys and more;
    forced here for the tiny model's)."""
    import prefopt.engine.attention as attention

    calls = []  # a spy on the kernel: which path ran is what this test is about
    monkeypatch.setattr(
        attention._MatmulAttention,
        "apply",
        lambda *args, apply=attention._MatmulAttention.apply: calls.append(1) or apply(*args),
    )
    matmuls = EngineSettings(matmul_attention="on", matmul_min_queries=0, matmul_min_keys=0)
    result = train(
        config(tiny_model, lists_file, tmp_path / "run", precision="bf16", max_steps=1),
        engine=matmuls,
    )
    step = first_step(tmp_path / "run")
    assert calls
    assert (
        step["reward_margin"] == 0.0
        and step["rewards/chosen"] == 0.0
        and step["rewards/rejected"] == 0.0
    )
    assert result.eval_start["reward_margin"] == 0.0


def test_runs_of_other_precisions_follow_each_other_in_one_process(
    tiny_model, lists_file, tmp_path
):
    for precision in (
        "fp32",
        "bf16",
        "fp32",
    ):  # accelerate keeps one precision per process unless told
        train(
            config(tiny_model, lists_file, tmp_path / precision, precision=precision, max_steps=1)
        )
        assert first_step(tmp_path / precision)["loss"] > 0


def test_cached_reference_equals_fresh_and_is_reused(tiny_model, lists_file, tmp_path, capsys):
    train(config(tiny_model, lists_file, tmp_path / "fresh", reference_cache=False))
    train(config(tiny_model, lists_file, tmp_path / "first"))
    assert "0 of 32 lists from the cache, 32 computed" in capsys.readouterr().out
    train(config(tiny_model, lists_file, tmp_path / "second", learning_rate=5e-4))
    assert "32 of 32 lists from the cache, 0 computed" in capsys.readouterr().out
    fresh = torch.load(tmp_path / "fresh" / "reference_logps.pt")
    cached = torch.load(tmp_path / "second" / "reference_logps.pt")
    for split in ("train", "eval"):
        assert torch.equal(fresh[split], cached[split])


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_per_token_reference_log_probs_for_ld_dpo_are_exact_cached_and_resumed(
    tiny_model, lists_file, tmp_path, capsys, lora
):
    """LD-DPO reads the reference per token: at step 0 every desensitized log-ratio is exactly 0
    (loss log 2 on every list), the per-token table sums to the summed one, a second run takes both
    from the cache, and a resumed run reads them from its folder."""
    settings = dict(loss="ld_dpo", lora=lora, max_steps=4, save_every=2, learning_rate=1e-3)
    first = train(config(tiny_model, lists_file, tmp_path / "first", **settings))
    assert "0 of 32 lists from the cache" in capsys.readouterr().out
    assert first_step(tmp_path / "first")["loss"] == pytest.approx(0.6931471806, abs=1e-6)
    assert (
        first.eval_start["loss"] == pytest.approx(0.6931471806, abs=1e-6)
        and first.eval_end["loss"] < 0.69
    )
    saved = torch.load(tmp_path / "first" / "reference_logps.pt")
    for split in ("train", "eval"):
        torch.testing.assert_close(saved["tokens"][split].sum(-1), saved[split], atol=1e-5, rtol=0)
    second = train(config(tiny_model, lists_file, tmp_path / "second", **settings))
    assert "32 of 32 lists from the cache, 0 computed" in capsys.readouterr().out
    assert second.eval_end == pytest.approx(first.eval_end, abs=1e-6)
    cached = torch.load(tmp_path / "second" / "reference_logps.pt")
    assert all(
        torch.equal(saved["tokens"][split], cached["tokens"][split]) for split in ("train", "eval")
    )
    with pytest.raises(KeyboardInterrupt):
        train(
            config(tiny_model, lists_file, tmp_path / "cut", **settings),
            on_step=crash_at(3, KeyboardInterrupt),
        )
    resumed = train(config(tiny_model, lists_file, tmp_path / "cut", **settings), resume=True)
    assert resumed.eval_end == pytest.approx(first.eval_end, abs=1e-6)


@pytest.mark.parametrize(
    "change",
    [
        {"max_completion_tokens": 3},
        {"pad_multiple": 8},
        {"share_prompt": False},
        {"chat_template": "always"},
    ],
)
def test_cache_misses_when_its_key_changes(tiny_model, lists_file, tmp_path, capsys, change):
    train(config(tiny_model, lists_file, tmp_path / "a"))
    capsys.readouterr()
    train(config(tiny_model, lists_file, tmp_path / "b", **change))
    assert "0 of 32 lists from the cache" in capsys.readouterr().out


def test_cache_misses_when_the_attention_kernel_changes(tiny_model, lists_file, tmp_path, capsys):
    """The matmul and flash kernels agree only to rounding: a bf16 reference of one is not the other's."""
    kernel = lambda mode: EngineSettings(
        matmul_attention=mode, matmul_min_queries=0, matmul_min_keys=0
    )
    bf16 = dict(precision="bf16", max_steps=1)
    train(config(tiny_model, lists_file, tmp_path / "a", **bf16), engine=kernel("on"))
    capsys.readouterr()
    train(config(tiny_model, lists_file, tmp_path / "b", **bf16), engine=kernel("off"))
    assert "0 of 32 lists from the cache" in capsys.readouterr().out
    train(config(tiny_model, lists_file, tmp_path / "c", **bf16), engine=kernel("off"))
    assert "32 of 32 lists from the cache" in capsys.readouterr().out


def test_a_compiled_run_starts_at_zero_rewards_and_keeps_its_own_cache_entries(
    tiny_model, lists_file, tmp_path, capsys
):
    """compile: true rounds differently from eager in the last bits, so its reference log-probs are
    cached apart; its reference pass and first step are compiled alike and agree."""
    train(config(tiny_model, lists_file, tmp_path / "eager", max_steps=1))
    capsys.readouterr()
    result = train(config(tiny_model, lists_file, tmp_path / "compiled", max_steps=1, compile=True))
    assert "0 of 32 lists from the cache" in capsys.readouterr().out
    step = first_step(tmp_path / "compiled")
    for name in ("reward_margin", "rewards/chosen", "rewards/rejected"):
        assert abs(step[name]) <= 1e-6, name
    assert abs(result.eval_start["reward_margin"]) <= 1e-6


def test_cache_misses_for_other_weights(tiny_model, lists_file, tmp_path, capsys):
    from tiny import build_tiny_model

    train(config(tiny_model, lists_file, tmp_path / "a"))
    other = build_tiny_model(tmp_path / "other-model", seed=1)
    capsys.readouterr()
    train(config(other, lists_file, tmp_path / "b"))
    assert "0 of 32 lists from the cache" in capsys.readouterr().out


def test_every_optimization_on_matches_all_off(tiny_model, lists_file, tmp_path):
    # one length bucket in both layouts, so both runs see the same lists in the same steps
    on = dict(share_prompt=True, reference_cache=True, pad_multiple=512)
    off = dict(share_prompt=False, reference_cache=False, pad_multiple=512)
    train(
        config(tiny_model, lists_file, tmp_path / "on", **on),
        engine=EngineSettings(chunk_tokens=64),
    )
    train(
        config(tiny_model, lists_file, tmp_path / "off", **off),
        engine=dataclasses.replace(ALL_OFF, chunk_tokens=100_000),
    )
    read = lambda out: [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    for a, b in zip(read(tmp_path / "on"), read(tmp_path / "off"), strict=True):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert first_step(tmp_path / "on")["tokens_per_s"] > 0


def test_a_fresh_run_never_reuses_an_earlier_runs_reference(
    tiny_model, lists_file, tmp_path, capsys
):
    # same size, other data
    other = write_jsonl(tmp_path / "other.jsonl", toy_rows(32, seed=9, k=4))
    train(config(tiny_model, lists_file, tmp_path / "run", reference_cache=False))
    first = torch.load(tmp_path / "run" / "reference_logps.pt")
    train(config(tiny_model, other, tmp_path / "run", reference_cache=False))
    second = torch.load(tmp_path / "run" / "reference_logps.pt")
    assert not torch.equal(first["train"], second["train"])


BLOCK = 64 << 20  # over glibc's largest mmap threshold (32 MiB)


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def mallinfo2() -> MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def faults_per_block(cycles: int = 8, size: int = BLOCK) -> float:
    """Mean page faults of allocating and touching a block (64 MiB), `cycles` times in a row (each
    one freed before the next)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.empty(size, dtype=torch.uint8).fill_(1)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / cycles


def mmaps_a_large_block() -> bool:
    """Whether malloc hands a block larger than all the free memory in its heap to mmap (so no free
    hole left in the heap, which glibc reuses first under any settings, can serve it)."""
    size = BLOCK + mallinfo2().fordblks
    mapped = mallinfo2().hblks
    block = torch.empty(size, dtype=torch.uint8)
    try:
        return mallinfo2().hblks > mapped
    finally:
        del block


def has_mallinfo2() -> bool:
    name, version = platform.libc_ver()
    return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 33)


glibc = pytest.mark.skipif(
    not has_mallinfo2(), reason="glibc's allocator settings (mallinfo2: glibc 2.33+)"
)


@glibc
def test_training_on_a_cpu_reuses_freed_memory_and_restores_the_allocator(
    tiny_model, lists_file, tmp_path
):
    """In a fresh process: what glibc's allocator does there depends on everything the process did
    before, and a test process has run hundreds of tests (one of them fragmenting the heap made
    this check fail once in a full run while it passed alone)."""
    import os
    import subprocess
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent.parent)  # for `tiny`, as pytest's pythonpath has it
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--allocator-check",
            str(tiny_model),
            str(lists_file),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _allocator_check(tiny_model, lists_file, tmp_path) -> None:
    assert mmaps_a_large_block()
    # each block mmapped and faulted in afresh (in 2 MiB pages with huge pages on)
    fresh = faults_per_block()
    during = []
    train(
        config(tiny_model, lists_file, tmp_path / "run", max_steps=2),
        on_step=lambda state, record: during.append((mmaps_a_large_block(), faults_per_block())),
    )
    assert during and not any(mapped for mapped, _ in during)
    # at most the first of 8 blocks was fresh memory
    assert max(faults for _, faults in during) <= fresh / 4
    assert mmaps_a_large_block()
    # below 32 MiB, freed blocks are reused after training, as glibc's own dynamic threshold would
    # have them (a fixed 128 KiB threshold would fault in every 16 MiB block afresh: 4096 faults)
    assert faults_per_block(size=BLOCK // 4) <= fresh / 16


if __name__ == "__main__" and sys.argv[1:2] == ["--allocator-check"]:
    from pathlib import Path

    _allocator_check(*(Path(argument) for argument in sys.argv[2:5]))
