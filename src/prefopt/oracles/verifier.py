"""The verifier oracle: a Python function scores each completion. It is named as
`path/file.py:function` or `package.module:function`, or is a built-in (`constraints`), and is
called as `function(prompt, completion, record)`, returning a bool, a number, or a dict of named
checks (the score is the fraction passed; the checks are kept). A function that raises on a
completion scores it as failed; the run shows each kind of exception once, with a count."""

from __future__ import annotations

import collections
import concurrent.futures
import importlib
import importlib.util
import inspect
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from prefopt.oracles.base import ORACLES, Judgement, ListToJudge, Oracle, OracleOptions
from prefopt.oracles.constraints import check_constraints
from prefopt.oracles.sandbox import SandboxSettings, check_python_tests, require_isolation

BUILT_IN: dict[str, Callable] = {
    "constraints": check_constraints,
    "python_tests": check_python_tests,
}


class VerifierOptions(OracleOptions):
    # a built-in name, path/file.py:function or package.module:function
    function: str = "constraints"
    # python_tests: the limits of its sandboxes (prefopt.oracles.sandbox.SandboxSettings)
    sandbox: SandboxSettings = SandboxSettings()


@ORACLES.register("verifier")
class VerifierOracle(Oracle):
    name: ClassVar[str] = "verifier"
    Options: ClassVar[type[OracleOptions]] = VerifierOptions

    def __init__(self, options: VerifierOptions):
        super().__init__(options)
        self.function = load_function(options.function)
        self.keywords = {}
        if self.function is check_python_tests:
            require_isolation(options.sandbox)  # refused now, not at the first completion
            self.keywords = {"settings": options.sandbox}
        elif "sandbox" in options.model_fields_set:
            raise ValueError("verifier option sandbox: only python_tests runs code in a sandbox")
        self.workers = options.sandbox.workers or len(os.sched_getaffinity(0))
        self.failures: collections.Counter[str] = collections.Counter()
        self.on_failure: Callable[[str], None] | None = None  # told once per kind of failure

    def identity(self) -> dict:
        source = inspect.getsource(self.function)  # an edited verifier gives other answers
        return {**super().identity(), "source": source}

    def judge(self, lists: list[ListToJudge]) -> list[Judgement]:
        pairs = [(item, completion) for item in lists for completion in item.completions]
        # python_tests waits on its sandboxes: completions are scored on every core at once
        workers = self.workers if self.function is check_python_tests else 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            scored = iter(pool.map(lambda pair: self._score(*pair), pairs))
        judgements = []
        for item in lists:
            mine = [next(scored) for _ in item.completions]
            judgements.append(
                Judgement(
                    scores=tuple(score for score, _ in mine),
                    details=tuple(checks for _, checks in mine),
                )
            )
        return judgements

    def _score(self, item: ListToJudge, completion: str) -> tuple[float, Any]:
        try:
            result = self.function(item.prompt, completion, item.record, **self.keywords)
            return _as_score(result)
        # a verifier's bug or a hostile completion: that completion failed
        except Exception as error:
            kind = f"{type(error).__name__}: {error}"
            if not self.failures[kind] and self.on_failure is not None:
                self.on_failure(
                    f"verifier {self.options.function} raised {kind} (the completion scores 0; "
                    "further ones are counted)"
                )
            self.failures[kind] += 1
            return 0.0, {"error": kind}


def _as_score(result: Any) -> tuple[float, Any]:
    if isinstance(result, bool):
        return float(result), None
    if isinstance(result, int | float):
        if not math.isfinite(result):
            raise ValueError(f"returned {result}, not a finite number")
        return float(result), None
    if isinstance(result, dict) and result and all(isinstance(v, bool) for v in result.values()):
        return sum(result.values()) / len(result), dict(result)
    raise TypeError(
        f"returned {type(result).__name__} {result!r:.80}; expected a bool, a number or a non-empty "
        "dict of named bool checks"
    )


def load_function(spec: str) -> Callable:
    """A verifier by name; fails at once, naming it, when it does not import or cannot be called
    as function(prompt, completion, record)."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    if ":" not in spec:
        raise ValueError(
            f"verifier {spec!r}: give a built-in ({', '.join(BUILT_IN)}), path/file.py:function or "
            "package.module:function"
        )
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            module_spec = importlib.util.spec_from_file_location(
                f"prefopt_verifier_{path.stem}", path
            )
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as error:
        raise ValueError(
            f"verifier {spec!r} does not import: {type(error).__name__}: {error}"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"verifier {spec!r}: {where} has no function {name!r}")
    try:
        inspect.signature(function).bind("prompt", "completion", {})
    except TypeError:
        raise ValueError(
            f"verifier {spec!r} must take (prompt, completion, record); its signature is "
            f"{inspect.signature(function)}"
        ) from None
    return function
