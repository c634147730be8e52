"""`prefopt demo`: the whole story on the embedded model. The built-in task (instruction following
with constraints a program checks) is written from its seed; the baseline is the default model's
answers to the held-out prompts; rounds of the loop sample K answers to training prompts, choose
the lists to label (entropy), have the `constraints` verifier score them, train LoRA on them (a
listwise loss with an SFT term) and evaluate; the final model and the initial one then answer
prompts of constraint types never trained on; and a report shows all of it. With `method="rl"`,
`prefopt rl` (GRPO) spends the same number of sampled answers in steps instead of rounds."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console

from prefopt.data import read_jsonl
from prefopt.demo.report import demo_report
from prefopt.demo.task import TRAINED, UNSEEN, satisfaction, write_task
from prefopt.files import write_atomic
from prefopt.generate import GenerateConfig, generate
from prefopt.label.app import create_app
from prefopt.label.store import Store
from prefopt.loop import LoopConfig, Round, loop, policy_after
from prefopt.rl import RLConfig, rl
from prefopt.rl.run import eval_answers
from prefopt.train.checkpoint import latest_checkpoint
from prefopt.train.metrics import read_metrics

# the demo's loop: 3 rounds of 48 labelled lists, each chosen from 96 candidates (measured on
# 2 CPU cores: docs/demo.md); the final policy of a round is the next round's start and reference
LOOP_SETTINGS: dict[str, Any] = {
    "oracle": "verifier",
    "oracle_options": {"function": "constraints"},
    "rounds": 3,
    "labels_per_round": 48,
    "candidates_per_label": 2,
    "k": 4,
    "max_new_tokens": 64,
    "acquisition": "entropy",
    "training": "continue",
    "train": {
        "loss": {"plackett_luce": 1.0, "sft": 0.5},
        "lora": True,
        "learning_rate": 5e-4,
        "epochs": 2,
        "batch_size": 4,
    },
}


# with --people, a person labels in the browser: a budget a person gets through in a few minutes a
# round; the verifier still measures the held-out answers
PEOPLE_SETTINGS: dict[str, Any] = {
    "labels_per_round": 8,
    "candidates_per_label": 4,
    "eval_oracle": "verifier",
    "eval_oracle_options": {"function": "constraints"},
}


# `--method rl`: GRPO with DAPO's clip-higher on the same task and verifier, spending the loop's
# budget of sampled answers (18 steps x 16 prompts x 4 answers = 3 rounds x 96 prompts x 4)
RL_SETTINGS: dict[str, Any] = {
    "oracle": "verifier",
    "oracle_options": {"function": "constraints"},
    "objective": "grpo",
    "loss_params": {"epsilon_high": 0.28},
    "k": 4,
    "prompts_per_step": 16,
    "max_steps": 18,
    "eval_every": 6,
    "dynamic_sampling": False,  # a fixed budget of sampled answers, as the loop's
    "max_new_tokens": 64,
    "learning_rate": 5e-4,
}
METHODS = ("loop", "rl")


@dataclasses.dataclass
class Arm:
    """One acquisition function's loop and what it reached."""

    name: str
    config: LoopConfig
    rounds: list[dict]

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def label(self) -> str:
        return f"loop, {self.name} acquisition"

    @property
    def curve(self) -> list[tuple[int, dict]]:
        """(answers sampled so far, held-out satisfaction), from the initial policy on."""
        per_round = self.config.labels_per_round * self.config.candidates_per_label * self.config.k
        first = self.rounds[0]["eval"]["baseline_score"]
        return [(0, first)] + [(per_round * (r["round"] + 1), r["eval"]["score"]) for r in
                               self.rounds]  # fmt: skip

    @property
    def labels(self) -> int:
        return self.rounds[-1]["labels_total"]

    @property
    def final_model(self) -> str:
        return policy_after(self.config, len(self.rounds) - 1)

    def heldout_rows(self) -> tuple[list[dict], list[dict]]:
        """The held-out answers of the initial and the final policy."""
        after = Round(self.folder, len(self.rounds) - 1).heldout_answers
        return read_jsonl(self.folder / "initial-answers.jsonl"), read_jsonl(after)

    def stage_rows(self) -> list[tuple[str, dict[str, float]]]:
        return [(f"{self.name}, round {r['round'] + 1}", r["seconds"]) for r in self.rounds]


@dataclasses.dataclass
class RLArm:
    """`prefopt rl` on the demo's task and what it reached."""

    config: RLConfig
    lines: list[dict]  # its metrics.jsonl

    name = "rl"

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def label(self) -> str:
        return f"rl, {self.config.objective}"

    @property
    def curve(self) -> list[tuple[int, dict]]:
        per_step = self.config.prompts_per_step * self.config.k
        return [(line["step"] * per_step, line["score"]) for line in self.lines if
                line["split"] == "eval" and line.get("score")]  # fmt: skip

    @property
    def labels(self) -> int:
        return 0

    @property
    def final_model(self) -> str:
        return str(self.folder / "merged")

    def heldout_rows(self) -> tuple[list[dict], list[dict]]:
        last = max(line["step"] for line in self.lines if line["split"] == "eval")
        return tuple(read_jsonl(eval_answers(self.folder, step)) for step in (0, last))

    def stage_rows(self) -> list[tuple[str, dict[str, float]]]:
        steps = [line for line in self.lines if line["split"] == "train"]
        total = {phase: sum(line[f"seconds/{phase}"] for line in steps) for phase in
                 ("sample", "score", "train")}  # fmt: skip
        return [(f"rl, {len(steps)} steps", {"generate": total["sample"], "label": total["score"],
                                             "train": total["train"]})]  # fmt: skip


@dataclasses.dataclass
class DemoResult:
    folder: Path
    arms: list[Arm]
    unseen: dict[str, dict]  # "before"/"after" -> satisfaction of the unseen constraint types
    report: Path
    seconds: dict[str, float]


def demo(
    out: str | Path = "runs/demo",
    *,
    model: str = "default",
    compare_random: bool = False,
    people: bool = False,
    port: int = 8000,
    console: Console | None = None,
    task_sizes: dict[str, int] | None = None,
    loop_settings: dict[str, Any] | None = None,
    method: str | None = None,
    rl_settings: dict[str, Any] | None = None,
) -> DemoResult:
    """Run the demo into `out` (resumable: run it again to continue). With `people`, the label app
    serves the loop's store on `port` and a person is the oracle. `method`: "loop" (rounds of
    `prefopt loop`, the default) or "rl" (`prefopt rl`, GRPO), which reach the same place on the
    same budget of sampled answers (docs/benchmarks.md).
    `task_sizes`, `loop_settings` and `rl_settings` change the task, the loop and rl (the tests
    make them small)."""
    method = method or "loop"
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if method == "rl" and (people or compare_random):
        raise ValueError("method rl: people and --compare-random belong to the loop")
    console = console or Console()
    out = Path(out)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    say = lambda text: console.print(text, highlight=False)
    task = write_task(out / "task", **(task_sizes or {}))
    say(
        f"[bold]task[/]: {_count(task['train'])} training prompts, {_count(task['heldout'])} held-out prompts "
        f"({', '.join(TRAINED)}), {_count(task['unseen'])} prompts of types never trained on ({', '.join(UNSEEN)})"
    )
    settings = {
        **LOOP_SETTINGS,
        **(PEOPLE_SETTINGS if people else {}),
        **(loop_settings or {}),
        "model": model,
        "prompts": str(task["train"]),
        "heldout": str(task["heldout"]),
    }
    server = thread = None
    if people:
        settings |= {
            "oracle": "people",
            "oracle_options": {
                "db": str(out / "labels.db"),
                "labels_per_list": 1,
                "poll_seconds": 0.5,
            },
        }
        server, thread = _serve_people(out, port, say)
    try:
        if method == "rl":
            arms = [_run_rl(model, task, rl_settings or {}, out, seconds, say, console)]
        else:
            arms = _run_arms(settings, out, compare_random, seconds, say, console)
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(timeout=10)
    say(
        "[bold]unseen constraint types[/]: the initial and the final model answer prompts of types never "
        "trained on (does the model learn to follow instructions, or just these?)"
    )
    unseen_started = time.perf_counter()
    final = arms[0].final_model
    unseen = {
        which: satisfaction(
            _answers(spec, task["unseen"], out / f"unseen-{which}.jsonl", settings, console)
        )
        for which, spec in (("before", model), ("after", final))
    }
    seconds["unseen types"] = time.perf_counter() - unseen_started
    seconds["total"] = time.perf_counter() - started
    report = demo_report(out, arms, unseen, seconds)
    result = DemoResult(out, arms, unseen, report, seconds)
    _summary(result, say)
    return result


def _run_arms(
    settings: dict, out: Path, compare_random: bool, seconds: dict, say, console
) -> list[Arm]:
    arms = []
    for name in ["entropy"] + ["random"] * compare_random:
        folder = out / ("active" if name == "entropy" else "random")
        kept = "the policy is least sure of" if name == "entropy" else "at random"
        judge = "you rank" if settings["oracle"] == "people" else "the verifier score"
        say(
            f"[bold]loop ({name} acquisition)[/]: each round samples {settings['k']} answers to "
            f"{settings['labels_per_round'] * settings['candidates_per_label']} training prompts, keeps the "
            f"{settings['labels_per_round']} lists {kept}, has {judge} them, trains LoRA on them and measures "
            "the held-out prompts with the verifier"
        )
        arm_started = time.perf_counter()
        config = LoopConfig(**{**settings, "acquisition": name, "output_dir": str(folder)})
        rounds = loop(config, resume=True, console=console)
        seconds[f"loop ({name})"] = time.perf_counter() - arm_started
        arms.append(Arm(name, config, rounds))
    return arms


def _run_rl(model: str, task: dict, overrides: dict, out: Path, seconds: dict, say,
            console) -> RLArm:  # fmt: skip
    config = RLConfig(**{**RL_SETTINGS, **overrides, "model": model, "prompts": str(task["train"]),
                         "heldout": str(task["heldout"]), "output_dir": str(out / "rl")})  # fmt: skip
    say(
        f"[bold]rl ({config.objective})[/]: each step samples {config.k} answers to "
        f"{config.prompts_per_step} training prompts with the live policy, has the verifier score "
        f"them and takes a {config.objective} step; {config.max_steps} steps spend "
        f"{config.max_steps * config.prompts_per_step * config.k} sampled answers, and the "
        f"held-out prompts are measured every {config.eval_every} steps"
    )
    started = time.perf_counter()
    folder = Path(config.output_dir)
    if not (folder / "merged").exists():
        rl(config, resume=latest_checkpoint(folder) is not None, console=console)
    seconds["rl"] = time.perf_counter() - started
    lines = read_metrics(folder / "metrics.jsonl")
    return RLArm(config, lines)


def _serve_people(out: Path, port: int, say):
    """The label app on the loop's store, in a thread of this process, with an annotator whose
    token is kept in `out/people-token.txt` (readable by its owner only) so a resumed demo logs in
    the same way."""
    out.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{out / 'labels.db'}")
    token_file = out / "people-token.txt"
    if not token_file.exists():
        token = store.add_user("you")

        def owner_only(staging: Path) -> None:
            staging.touch(mode=0o600)
            staging.write_text(token + "\n")

        write_atomic(token_file, owner_only)
    server = uvicorn.Server(
        uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise OSError(
            f"the label app could not listen on 127.0.0.1:{port} (is the port in use? choose --port)"
        )
    say(
        f"[bold]you are the oracle[/]: open http://127.0.0.1:{port}/login and log in with the token in "
        f"{token_file}; the loop waits for your rankings each round"
    )
    return server, thread


def _count(path: Path) -> int:
    # as read_jsonl
    return sum(1 for line in path.read_text(encoding="utf-8").split("\n") if line.strip())


def _answers(model: str, prompts: Path, path: Path, settings: dict, console: Console) -> list[dict]:
    """Greedy answers of `model` to `prompts`, as the loop's evaluation reads a model (generated once)."""
    done = path.with_suffix(".done")
    if not done.exists():
        path.unlink(missing_ok=True)
        generate(
            GenerateConfig(
                model=model,
                prompts=str(prompts),
                out=str(path),
                k=1,
                temperature=0.0,
                max_new_tokens=settings["max_new_tokens"],
            ),
            console=console,
        )
        write_atomic(done, "")
    return read_jsonl(path)


def _summary(result: DemoResult, say) -> None:
    for arm in result.arms:
        (_, before), (answers, after) = arm.curve[0], arm.curve[-1]
        say(
            f"held-out constraint satisfaction ({arm.label}): {before['value']:.3f} [{before['low']:.3f}, "
            f"{before['high']:.3f}] -> {after['value']:.3f} [{after['low']:.3f}, {after['high']:.3f}] "
            f"({100 * (after['value'] - before['value']):+.1f} points, {answers} sampled answers)"
        )
    before, after = result.unseen["before"]["score"], result.unseen["after"]["score"]
    say(
        f"unseen constraint types: {before['value']:.3f} -> {after['value']:.3f} "
        f"({100 * (after['value'] - before['value']):+.1f} points)"
    )
    say(f"{result.seconds['total'] / 60:.1f} minutes; report: {result.report}")
