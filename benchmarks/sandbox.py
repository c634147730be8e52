"""The python_tests verifier's throughput: scoring 64 completions × 5 tests (half right, half
wrong) through the verifier oracle, with the sandboxes (a pair of bubblewrap sandboxes per
completion: one completion at a time, and one per core) against the design before them, measured
side by side in one run: one plain process a test, the test appended to the code, the exit status
as the verdict, one completion after another.

    python benchmarks/sandbox.py [--completions 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefopt.oracles import ListToJudge, make_oracle
from prefopt.oracles.sandbox import _python

RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = [f"assert add({n}, {n + 1}) == {2 * n + 1}" for n in range(5)]


def one_process(code: str, tests: list[str]) -> dict[str, bool]:
    """The design before the sandboxes: code and test in one plain process, exit status 0 passes."""
    checks = {}
    with tempfile.TemporaryDirectory() as folder:
        for n, test in enumerate(tests, 1):
            (Path(folder) / "solution.py").write_text(code + "\n\n" + test + "\n")
            done = subprocess.run(
                [_python(), "-I", "-S", "solution.py"], cwd=folder, capture_output=True, timeout=10
            )
            checks[f"test {n}"] = done.returncode == 0
    return checks


def measure(name: str, score) -> dict:
    """Seconds and tests passed of `score()`: per completion, a dict of checks or a Judgement."""
    started = time.perf_counter()
    results = score()
    seconds = time.perf_counter() - started
    checks = [r if isinstance(r, dict) else r.details[0] for r in results]
    passed = sum(sum(c.values()) for c in checks)
    tests = sum(len(c) for c in checks)
    print(f"{name:42s} {seconds:7.2f} s  {tests / seconds:6.1f} tests/s  {passed} of {tests} "
          "tests passed", flush=True)  # fmt: skip
    return {"seconds": seconds, "tests": tests, "tests_passed": passed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    completions = [RIGHT if n % 2 == 0 else WRONG for n in range(args.completions)]
    record = {"tests": TESTS}
    cores = len(os.sched_getaffinity(0))
    print(f"{args.completions} completions × {len(TESTS)} tests, {cores} cores, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    one_at_a_time = make_oracle("verifier", {"function": "python_tests", "sandbox": {"workers": 1}})
    every_core = make_oracle("verifier", {"function": "python_tests"})
    as_lists = [ListToJudge("add two numbers", (code,), record) for code in completions]
    before = "one plain process a test (before)"
    results = {
        before: measure(before, lambda: [one_process(c, TESTS) for c in completions]),
        "sandboxes, one completion at a time": measure(
            "sandboxes, one completion at a time", lambda: one_at_a_time.judge(as_lists)
        ),
        f"sandboxes, {cores} completions at once": measure(
            f"sandboxes, {cores} completions at once", lambda: every_core.judge(as_lists)
        ),
    }
    for name, result in results.items():
        result["ratio_to_before"] = result["seconds"] / results[before]["seconds"]
        print(f"{name:42s} {result['ratio_to_before']:.2f}× the time before")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"python": sys.version, "cores": cores, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
