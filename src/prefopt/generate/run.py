"""`prefopt generate`: K completions for every prompt of a file, one JSON line per prompt written as
each batch finishes, resumable without redoing or duplicating a prompt. The lines are valid items
for `prefopt label serve` and input for `prefopt score`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from prefopt.data import DataError, PreferenceRecord, load_records
from prefopt.data.tokenize import prompt_ids
from prefopt.engine.model import load_model, load_tokenizer
from prefopt.engine.precision import decode_precision
from prefopt.files import write_atomic
from prefopt.generate.config import GenerateConfig
from prefopt.generate.sampling import Sample, SamplingSettings, sample
from prefopt.generate.vllm_backend import sample_with_vllm
from prefopt.processes import ONE_PROCESS, Processes


@dataclasses.dataclass
class GenerateResult:
    out: Path
    prompts: int  # in the prompts file
    generated: int  # by this run
    already_done: int  # found in the output file on --resume
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def load_prompts(source: str) -> list[PreferenceRecord]:
    """The distinct prompts of any file `prefopt train` reads, in file order."""
    records = load_records(source, require_completions=False, require_scores=False).records
    seen, prompts = set(), []
    for record in records:
        if record.prompt_text not in seen:
            seen.add(record.prompt_text)
            prompts.append(record)
    return prompts


def generate(
    config: GenerateConfig,
    *,
    resume: bool = False,
    console: Console | None = None,
    model=None,
    tokenizer=None,
    processes: Processes = ONE_PROCESS,
) -> GenerateResult:
    """Generate as `config` says; `model` and `tokenizer` may be given already loaded (the loop's
    policy stays in memory between rounds). Several `processes` each answer every n-th prompt and
    the main one writes them all (prefopt's sampler seeds each answer by its prompt and k, so the
    answers do not depend on the number of processes); every process calls it."""
    console = console or Console()
    records = load_prompts(config.prompts)
    out = Path(config.out)
    done = _finished_prompts(out, config, resume, records)
    tokenizer = tokenizer or load_tokenizer(config.model)
    ids = [prompt_ids(record, tokenizer, config.tokenize_settings()) for record in records]
    todo = [i for i in range(len(records)) if i not in done]
    precision = decode_precision(
        config.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if done:
        console.print(
            f"resuming: {len(done)} of {len(records)} prompts already in {out}", highlight=False
        )
    started, tokens = time.perf_counter(), 0
    if not todo:
        return GenerateResult(out, len(records), 0, len(done), 0, 0.0)
    if config.backend == "vllm":
        model = None
    else:
        model = model or load_model(config.model)
    common = {"model": config.model, "seed": config.seed, "sampling": config.sampling().describe()}
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = [
        TextColumn("[bold]generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("prompts"),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    main = processes.main
    with (out.open("a", encoding="utf-8") if main else contextlib.nullcontext()) as handle, \
            Progress(*columns, console=console, disable=not main) as progress:  # fmt: skip
        task = progress.add_task("generate", total=len(todo), speed="")

        def write(indices: list[int], batch: list[list[Sample]]) -> None:
            nonlocal tokens
            for i, samples in zip(indices, batch, strict=True):
                record = records[todo[i]]
                meta = {
                    **common,
                    "index": todo[i],
                    "lengths": [len(s.token_ids) for s in samples],
                    "finished": [s.finished for s in samples],
                    "logps": [s.logp for s in samples],
                }
                row = {
                    **record.extra,
                    "prompt": record.prompt,
                    "completions": [s.text for s in samples],
                    "meta": meta,
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                tokens += sum(len(s.token_ids) for s in samples)
            handle.flush()
            speed = tokens / (time.perf_counter() - started)
            progress.update(task, advance=len(indices), speed=f"{speed:.0f} tokens/s")

        def answer(prompts: list[list[int]], on_batch) -> None:
            if config.backend == "vllm":
                on_batch(list(range(len(prompts))),
                         sample_with_vllm(config.model, prompts, config.sampling(), precision))  # fmt: skip
            else:
                sample(model, tokenizer, prompts, config.sampling(), backend=config.backend,
                       precision=precision, on_batch=on_batch)  # fmt: skip

        prompts = [ids[i] for i in todo]
        if processes.count == 1:
            answer(prompts, write)
        else:  # each process its share; the main one writes them all, in order
            mine, found = processes.share(range(len(todo))), {}
            if mine:
                answer([prompts[i] for i in mine], lambda at, batch: found.update(
                    zip([mine[i] for i in at], batch, strict=True)))  # fmt: skip
            everyone = processes.gather([found[i] for i in mine])
            if main:
                write(list(range(len(todo))), everyone)
    if main:
        _in_prompt_order(out)
    processes.wait()
    return GenerateResult(
        out, len(records), len(todo), len(done), tokens, time.perf_counter() - started
    )


def _in_prompt_order(out: Path) -> None:
    """Lines are written as batches finish (prompts are batched by length); once every prompt is
    done, the file is rewritten in the prompts' order, atomically."""
    # "\n" only, as read_jsonl
    lines = [line for line in out.read_text(encoding="utf-8").split("\n") if line]
    ordered = sorted(lines, key=lambda line: json.loads(line)["meta"]["index"])
    write_atomic(out, "".join(line + "\n" for line in ordered))


def _finished_prompts(
    out: Path, config: GenerateConfig, resume: bool, records: list[PreferenceRecord]
) -> set[int]:
    """The prompt indices already in `out` (with --resume); a line cut short by an interruption is
    dropped from the file. Without --resume an existing output is never overwritten."""
    if not out.exists() or out.stat().st_size == 0:
        return set()
    if not resume:
        raise DataError(
            f"{out} already exists: add --resume to continue it, or remove it to start again"
        )
    lines = out.read_text(encoding="utf-8").split("\n")
    sampling = json.loads(json.dumps(config.sampling().describe()))  # as the file holds it
    kept, done = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines) - 1:  # only the last line can be cut short by an interruption
                raise DataError(
                    f"{out}, line {number}: not valid JSON; is this a prefopt generate output?"
                ) from None
            continue
        meta = row.get("meta", {}) if isinstance(row, dict) else {}
        if meta.get("sampling") != sampling or meta.get("model") != config.model:
            raise DataError(
                f"{out}, line {number}: written with other settings (model {meta.get('model')!r}, "
                f"sampling {meta.get('sampling')}); resume with the same settings or start a new file"
            )
        index = meta.get("index")
        if (
            not isinstance(index, int)
            or not 0 <= index < len(records)
            or row["prompt"] != records[index].prompt
        ):
            raise DataError(
                f"{out}, line {number}: its prompt is not prompt {index} of {config.prompts}; was the "
                "prompts file changed? Start a new output file"
            )
        done.add(index)
        kept.append(line)
    write_atomic(out, "".join(line + "\n" for line in kept))
    return done


__all__ = ["GenerateConfig", "GenerateResult", "SamplingSettings", "generate", "load_prompts"]
