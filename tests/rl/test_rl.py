"""`prefopt rl` on a tiny model with a verifier as the oracle: steps run end to end and learn,
the metrics carry TRL's names, a run stopped anywhere and resumed reaches the weights and metrics
of one never stopped, and bad settings fail at load naming what is valid."""

import json

import pytest
import torch
from safetensors.torch import load_file

from prefopt.errors import TrainingError
from prefopt.oracles import Judgement
from prefopt.rl import RLConfig, rl
from prefopt.train.checkpoint import latest_checkpoint
from tiny import on_two_processes, write_jsonl

# rewards the letter a: many answers of a group differ, so the groups carry signal
VERIFIER = "def count_a(prompt, completion, record):\n    return completion.count('a') / 10\n"


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rl")
    (folder / "verify.py").write_text(VERIFIER)
    prompts = write_jsonl(
        folder / "prompts.jsonl", [{"prompt": f"say {i}: apple"} for i in range(6)]
    )
    return folder, prompts


def settings(tiny_model, setup, out, **overrides):
    folder, prompts = setup
    return RLConfig(**{
        "model": str(tiny_model), "prompts": str(prompts), "output_dir": str(out),
        "oracle_options": {"function": f"{folder / 'verify.py'}:count_a"}, "k": 4,
        "prompts_per_step": 3, "max_new_tokens": 8, "max_steps": 3, "learning_rate": 5e-3,
        "precision": "fp32", "save_every": 1, **overrides,
    })  # fmt: skip


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows):
    """The metrics that do not depend on how the work was split: no timings, no pass counts."""
    return [{k: v for k, v in row.items() if not k.startswith("seconds/") and k != "forward_passes"}
            for row in rows]  # fmt: skip


def weights(out):
    return load_file(latest_checkpoint(out) / "trained.safetensors")


@pytest.fixture(scope="module")
def whole(tiny_model, setup):
    out = setup[0] / "whole"
    return out, rl(settings(tiny_model, setup, out))


def test_steps_run_and_log_trls_metrics(whole):
    out, result = whole
    rows = metrics(out)
    assert result.steps == 3 and [row["step"] for row in rows] == [1, 2, 3]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                "completions/clipped_ratio", "clip_ratio", "loss", "seconds/sample",
                "seconds/score", "seconds/train", "logp_gap"):  # fmt: skip
        assert key in rows[0], key
    assert (
        rows[0]["groups_trained"] == 3
    )  # dynamic sampling filled the step with informative groups
    assert (out / "model" / "adapter_config.json").exists() and (
        out / "merged" / "config.json"
    ).exists()
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "merged" / "README.md")  # the model card
    assert "prefopt rl" in card.text and "`grpo`" in card.text and "| `k` | `4` |" in card.text


def test_held_out_prompts_are_scored_every_eval_every_steps(tiny_model, setup, tmp_path):
    """The initial policy at step 0, then every eval_every steps and at the end: the mean score
    and the win rate against the initial answers (at step 0 every pair is a tie, 0.5)."""
    from prefopt.report import report

    folder, prompts = setup
    out = tmp_path / "eval"
    result = rl(
        settings(tiny_model, setup, out, heldout=str(prompts), eval_every=2, save_every=None)
    )
    evals = [row for row in metrics(out) if row["split"] == "eval"]
    assert [row["step"] for row in evals] == [0, 2, 3] and result.steps == 3
    assert all(
        row["prompts"] == 6 and row["score"]["low"] <= row["score"]["value"] for row in evals
    )
    assert evals[0]["win_rate"]["value"] == 0.5 and evals[0]["win_rate"]["low"] == 0.5
    for step in (0, 2, 3):  # the answers of each evaluation, as `prefopt generate` writes them
        rows = [json.loads(line) for line in (out / "eval" / f"step-{step}.jsonl").open()]
        assert len(rows) == 6 and all(len(row["completions"]) == 1 for row in rows)
        assert [row["prompt"] for row in rows] == [f"say {i}: apple" for i in range(6)]
    assert "Held out" in report(out).read_text()


def test_the_sampler_and_the_trainer_agree_on_log_probs(whole):
    """The answers' summed log-probs from the sampler (decode kernels) and from the training
    engine (packed rows) are one model's numbers: equal to float rounding at step 1, where π_old
    is the trained policy itself (ratio 1)."""
    out, _ = whole
    assert metrics(out)[0]["logp_gap"] < 1e-3
    assert metrics(out)[0]["clip_ratio"] == 0.0


def test_it_learns_the_reward(tiny_model, setup, tmp_path):
    """One prompt, one-token answers rewarded when they start with a letter: the policy's
    probability of such a first token rises (the tiny model's, computed, not sampled)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = setup
    (folder / "alpha.py").write_text(
        "def alpha(p, completion, r):\n    return float(completion[:1].isalpha())\n"
    )
    prompt = write_jsonl(folder / "one.jsonl", [{"prompt": "say 1: apple"}])
    out = tmp_path / "learn"
    config = settings(tiny_model, setup, out, prompts=str(prompt), k=16, prompts_per_step=1,
                      max_new_tokens=1, max_steps=8, learning_rate=1e-2, save_every=None,
                      oracle_options={"function": f"{folder / 'alpha.py'}:alpha"})  # fmt: skip
    rl(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    alpha = torch.tensor([tokenizer.decode([i])[:1].isalpha() for i in range(len(tokenizer))])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "say 1: apple"}],
                                        add_generation_prompt=True)  # fmt: skip
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids

    def p_alpha(folder):
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1].softmax(-1)[alpha].sum().item()

    assert p_alpha(out / "merged") > p_alpha(tiny_model) + 0.005


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_run_stopped_and_resumed_reaches_the_uninterrupted_run(
    tiny_model, setup, whole, tmp_path, stop_after
):
    out = tmp_path / "stopped"

    def stop(step, record):
        if step == stop_after:
            raise Killed

    with pytest.raises(Killed):
        rl(settings(tiny_model, setup, out), on_step=stop)
    rl(settings(tiny_model, setup, out), resume=True)
    assert without_timings(metrics(out)) == without_timings(metrics(whole[0]))
    for name, tensor in weights(out).items():
        assert torch.equal(tensor, weights(whole[0])[name]), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"oracle": "people"}, "prefopt loop"),
        ({"objective": "dpo"}, "not a group RL objective; valid: grpo"),
        ({"objective": "grpp"}, "unknown loss 'grpp'"),
        ({"loss_params": {"epsilon": 0.2}}, "grpo has no parameter 'epsilon'"),
        ({"oracle": "verifer"}, "unknown oracle 'verifer'"),
    ],
)
def test_bad_settings_fail_at_load_naming_what_is_valid(
    tiny_model, setup, tmp_path, overrides, message
):
    with pytest.raises(ValueError, match=message):
        settings(tiny_model, setup, tmp_path / "bad", **overrides)


def test_a_verifier_that_fails_scores_0_and_is_counted(tiny_model, setup, tmp_path):
    folder, _ = setup
    (folder / "nan.py").write_text(
        "def nan(prompt, completion, record):\n    return float('nan')\n"
    )
    out = tmp_path / "nan"
    config = settings(tiny_model, setup, out, max_steps=1,
                      oracle_options={"function": f"{folder / 'nan.py'}:nan"})  # fmt: skip
    rl(config)
    row = metrics(out)[0]
    # three draws of three prompts (no group carried signal), four answers each
    assert row["draws"] == 3 and row["oracle_failures"] == 36 and row["reward"] == 0.0
    assert row["no_informative_group"] == 1.0


class NotANumber:
    """An oracle (a reward model gone wrong) whose scores are NaN."""

    def judge(self, lists):
        return [Judgement(scores=tuple(float("nan") for _ in item.completions)) for item in lists]


def test_a_reward_that_is_not_a_number_is_refused_naming_the_prompt(tiny_model, setup):
    from prefopt.generate import load_prompts
    from prefopt.generate.sampling import Sample
    from prefopt.rl.rewards import Rewards
    from prefopt.rl.run import _score

    records = load_prompts(setup[1])
    samples = [Sample("x", (1,), -1.0, "length")] * 2
    rewards = Rewards(["reward_model"], [NotANumber()], [1.0])
    with pytest.raises(TrainingError, match=r"reward_model .* prompt 3 \(.*prompts.jsonl, row 3\)"):
        _score(rewards, records, [(2, samples)])


class Constant:
    """An oracle that scores every answer `value`, or abstains on prompts holding `skip`."""

    def __init__(self, value, skip=None):
        self.value, self.skip = value, skip

    def judge(self, lists):
        return [Judgement(abstained="not applicable") if self.skip and self.skip in item.prompt
                else Judgement(scores=(self.value,) * len(item.completions))
                for item in lists]  # fmt: skip


def test_several_oracles_add_up_with_their_weights_and_may_abstain():
    """An answer's reward is the weighted sum over the oracles that scored its prompt; an oracle
    that abstains leaves the sum (TRL's None), and a prompt none scored gets 0."""
    from prefopt.oracles import ListToJudge
    from prefopt.rl.rewards import Rewards

    rewards = Rewards(["a", "b"], [Constant(1.0), Constant(3.0, skip="code")], [0.5, 2.0])
    lists = [ListToJudge("math", ("x", "y")), ListToJudge("code", ("x", "y"))]
    scored = rewards.score(lists, ["one", "two"])
    assert [s.rewards for s in scored] == [[6.5, 6.5], [0.5, 0.5]]
    metrics = rewards.metrics(scored)
    assert metrics["rewards/a/mean"] == 1.0 and metrics["rewards/b/mean"] == 3.0
    assert metrics["rewards/b/abstained"] == 1 and metrics["rewards/a/abstained"] == 0
    nobody = Rewards(["b"], [Constant(3.0, skip="code")], [1.0]).score(lists[1:], ["two"])
    assert nobody[0].rewards == [0.0, 0.0]


def test_a_run_with_two_weighted_verifiers_logs_each(tiny_model, setup, tmp_path):
    folder, _ = setup
    (folder / "length.py").write_text(
        "def short(prompt, completion, record):\n    return float(len(completion) < 12)\n"
    )
    out = tmp_path / "two"
    rl(settings(tiny_model, setup, out, max_steps=1, save_every=None,
                oracle=["verifier", "verifier"], oracle_weights=[1.0, 0.5],
                oracle_options=[{"function": f"{folder / 'verify.py'}:count_a"},
                                {"function": f"{folder / 'length.py'}:short"}]))  # fmt: skip
    row = metrics(out)[0]
    mean = row["rewards/verifier_1/mean"] + 0.5 * row["rewards/verifier_2/mean"]
    assert row["reward"] == pytest.approx(mean)
    assert 0 <= row["rewards/verifier_2/mean"] <= 1


def test_mismatched_oracle_lists_fail_at_load(tiny_model, setup, tmp_path):
    with pytest.raises(ValueError, match="oracle_weights: 1 given for 2 oracles"):
        settings(tiny_model, setup, tmp_path, oracle=["verifier", "judge"], oracle_weights=[1.0],
                 oracle_options=[{"function": "a.py:f"}, {}])  # fmt: skip
    with pytest.raises(ValueError, match="a list of options"):
        settings(tiny_model, setup, tmp_path, oracle=["verifier", "verifier"])


def test_the_command_line(prefopt_cli, tiny_model, setup, tmp_path):
    folder, prompts = setup
    out = tmp_path / "cli"
    result = prefopt_cli(
        "rl", f"--model={tiny_model}", f"--prompts={prompts}", f"--output_dir={out}",
        f"--oracle_options={{function: '{folder / 'verify.py'}:count_a'}}", "--max_steps=2",
        "--prompts_per_step=2", "--max_new_tokens=6", "--precision=fp32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 steps" in result.stdout and len(metrics(out)) == 2
    bad = prefopt_cli("rl", f"--prompts={prompts}", "--objective=dpo")
    assert bad.returncode == 2 and "not a group RL objective" in bad.stderr


def test_the_example_loads():
    from pathlib import Path

    from prefopt.settings import load_config

    config = load_config(RLConfig, Path(__file__).parents[2] / "examples" / "rl.yaml", [])
    assert config.objective == "grpo" and config.oracle_options == {"function": "constraints"}


def test_gradient_checkpointing_changes_nothing_but_memory(tiny_model, setup, whole, tmp_path):
    out = tmp_path / "checkpointed"
    rl(settings(tiny_model, setup, out, gradient_checkpointing=True))
    ours, plain = metrics(out), metrics(whole[0])
    for a, b in zip(ours, plain, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["reward"] == b["reward"]
    for name, tensor in weights(out).items():
        torch.testing.assert_close(tensor, weights(whole[0])[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, sharded",
    [({"loss_params": {"aggregation": "token", "epsilon_high": 0.28}, "minibatches": 2,
       "max_tokens_per_forward": 30}, False),
     ({"objective": "disco", "num_iterations": 2}, False),
     ({"minibatches": 2, "max_tokens_per_forward": 30}, True)],
    ids=["dapo-minibatches", "disco-iterations", "fsdp"],
)  # fmt: skip
def test_two_processes_reach_the_weights_of_one(tiny_model, setup, tmp_path, overrides, sharded):
    """DDP, or FSDP2 through accelerate, over 2 CPU processes (gloo, started by torchrun): each
    samples and scores every other prompt of a step (a sharded policy from its plain copy,
    rewritten from the gathered weights after each update), both see the whole step, each trains
    on its groups (three groups: two and one) with the batch-wide denominators, in as many
    forward passes as the other (a group a pass where max_tokens_per_forward says so, the process
    short of groups passing a masked one), and the run ends where one process's does."""
    import os
    import subprocess

    import yaml

    config = settings(tiny_model, setup, tmp_path / "one", save_every=None, **overrides)
    rl(config)
    (tmp_path / "ddp.yaml").write_text(
        yaml.safe_dump(config.model_dump() | {"output_dir": str(tmp_path / "ddp")})
    )
    result = subprocess.run(
        on_two_processes("rl", str(tmp_path / "ddp.yaml")),
        capture_output=True, text=True, timeout=300,
        env=os.environ | ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"} if sharded else {}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (latest_checkpoint(tmp_path / "ddp") / "sharded").is_dir() == sharded
    one, ddp = metrics(tmp_path / "one"), metrics(tmp_path / "ddp")
    for a, b in zip(without_timings(one), without_timings(ddp), strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            expected = pytest.approx(value, rel=1e-4, abs=1e-6) if key != "split" else value
            assert b[key] == expected, key
    saved = lambda out: load_file(out / "model" / "adapter_model.safetensors")
    assert saved(tmp_path / "one").keys() == saved(tmp_path / "ddp").keys()
    for name, tensor in saved(tmp_path / "one").items():
        # Adam divides by the root of the squared gradients: float-rounding differences in near-zero
        # gradients move a weight by a small fraction of a step (the learning rate, 5e-3)
        torch.testing.assert_close(saved(tmp_path / "ddp")[name], tensor, atol=1e-5, rtol=1e-5)


def test_minibatches_take_one_optimizer_step_each(tiny_model, setup, tmp_path):
    """Three groups a step in two minibatches, two passes: four optimizer steps a step, the later
    ones against π_old from before the step's first update (so some ratios leave 1)."""
    out = tmp_path / "mini"
    rl(settings(tiny_model, setup, out, max_steps=2, minibatches=2, num_iterations=2,
                learning_rate=5e-2))  # fmt: skip
    state = torch.load(latest_checkpoint(out) / "optimizer.pt", weights_only=False)["optimizer"]
    assert {int(s["step"]) for s in state["state"].values()} == {8}
    assert any(row.get("clip_ratio", 0) > 0 for row in metrics(out))


def test_bf16_samples_through_a_copy_refreshed_after_each_update(tiny_model, setup, tmp_path):
    """In bf16 the policy samples through its bf16 copy (LoRA merged), refreshed after each
    update: the sampler's log-probs stay those of the trained policy up to bf16 rounding, and
    the saved model keeps float32 weights."""
    import json as json_module

    out = tmp_path / "bf16"
    rl(settings(tiny_model, setup, out, precision="bf16", max_steps=3, save_every=None))
    gaps = [row["logp_gap"] for row in metrics(out) if "logp_gap" in row]
    # a copy left stale after the first update is off by more than 0.3 here (tried)
    assert len(gaps) == 3 and max(gaps) < 0.05
    config = json_module.loads((out / "merged" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"


def same_run(a, b):
    """Two runs' metrics (timings and pass counts aside; the loss and the gradient's norm among
    them) and trained weights agree to float rounding."""
    for x, y in zip(without_timings(metrics(a)), without_timings(metrics(b)), strict=True):
        assert x.keys() == y.keys()
        for key, value in x.items():
            assert y[key] == (
                pytest.approx(value, rel=1e-4, abs=1e-6) if key != "split" else value
            ), key
    for name, tensor in weights(a).items():
        # Adam divides by the root of the squared gradients: rounding in near-zero gradients
        # moves a weight by a small fraction of a step (the learning rate, 5e-3)
        torch.testing.assert_close(weights(b)[name], tensor, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"loss_params": {"aggregation": "token", "epsilon_high": 0.28}},
     {"loss_params": {"aggregation": "constant", "scale_rewards": "none"}},
     {"objective": "rloo"}, {"objective": "reinforce_pp"},
     {"objective": "disco", "loss_params": {"threshold": 0.05}},
     {"minibatches": 2, "num_iterations": 2}, {"loss_params": {"beta": 0.5}}],
    ids=["grpo", "dapo", "dr-grpo", "rloo", "reinforce-pp", "disco", "minibatches-iterations",
         "kl-to-reference"],
)  # fmt: skip
def test_forward_passes_of_part_of_a_minibatch_change_memory_not_the_update(
    tiny_model, setup, tmp_path, overrides
):
    """A step's groups trained in several forward passes (each group alone: its prompt and four
    answers are over 30 tokens) reach the metrics and weights of one pass: every batch-wide
    denominator counts the whole minibatch."""
    config = lambda out, **more: settings(tiny_model, setup, tmp_path / out, save_every=None,
                                          **overrides, **more)  # fmt: skip
    rl(config("one", max_tokens_per_forward=None))
    rl(config("parts", max_tokens_per_forward=30))
    passes = [
        row["forward_passes"] for row in metrics(tmp_path / "parts") if "forward_passes" in row
    ]
    assert max(passes) >= 3
    same_run(tmp_path / "one", tmp_path / "parts")


def test_disco_after_an_update_trains_a_minibatch_in_one_pass(tiny_model, setup, tmp_path):
    """Its trust region is a mean over the whole minibatch of what the pass computes."""
    out = tmp_path / "disco"
    rl(settings(tiny_model, setup, out, objective="disco", num_iterations=2, max_steps=1,
                max_tokens_per_forward=30, save_every=None))  # fmt: skip
    assert metrics(out)[0]["forward_passes"] == 1


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_kl_to_the_reference(tiny_model, setup, tmp_path, lora):
    """β > 0: the reference is the policy with its adapters off (LoRA) or the initial model's
    frozen copy (full fine-tuning). Before the first update the policy is the reference (KL 0
    exactly); after it, the KL is positive and the update differs from β = 0's."""
    runs = {}
    for beta in (0.0, 0.5):
        out = tmp_path / f"beta-{beta}"
        rl(settings(tiny_model, setup, out, lora=lora, learning_rate=5e-2, save_every=None,
                    loss_params={"beta": beta}))  # fmt: skip
        runs[beta] = out
    rows = metrics(runs[0.5])
    assert rows[0]["kl"] == 0.0 and all(row["kl"] > 0 for row in rows[1:])
    assert "kl" not in metrics(runs[0.0])[0]
    assert any(not torch.equal(tensor, weights(runs[0.0])[name])
               for name, tensor in weights(runs[0.5]).items())  # fmt: skip
