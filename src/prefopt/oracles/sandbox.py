"""The `python_tests` verifier (the CodeDPO setting, Zhang et al. 2024): a completion's code runs
against its record's tests, and the verdict is computed where the completion cannot reach it.

Two processes per test, each in a bubblewrap sandbox of its own (docs/oracles.md has the threat
model): the completion's code loads in one (`sandboxed/serve.py`), the tests run in the other
(`sandboxed/harness.py`), where every name the tests use but do not define stands for the
completion's object, reached through a pipe that carries plain data (`sandboxed/wire.py`). So
`assert add(2, 2) == 4` compares numbers in the tests' process: an object "equal to everything",
an early exit with status 0, printed markers, a tampered hook or anything the code writes decides
nothing. A test may also be a program's input and expected output (stdin/stdout problems): the
code runs as a script and this process compares what it printed.

Each sandbox: new PID, network, IPC, UTS and user namespaces (every process the code starts dies
with it), a read-only view of /usr and the interpreter only, a size-limited private /tmp as the
only writable place, a clean environment, its own user (as root, a host user of its own per
sandbox), and limits on wall time, CPU, memory, processes, open files and file size. Where
bubblewrap cannot run, python_tests refuses, unless `unsafe_local` is set (then: the limits, and
an audit hook, in plain processes)."""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import functools
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from prefopt.oracles.sandboxed import wire

PROGRAMS = Path(__file__).parent / "sandboxed"
_UID_BASE = 1_800_000_000  # as root, each sandbox runs as a host user of its own from here
_slots = itertools.count()


class SandboxSettings(BaseModel):
    """Limits of each sandboxed process (the verifier's `sandbox` option)."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(10.0, gt=0, description="Wall-clock limit of one test.")
    memory_mb: int = Field(512, ge=64, description="Address space of each process.")
    processes: int = Field(32, ge=4, description="Processes (and threads) a sandbox may run.")
    open_files: int = Field(64, ge=16, description="Open file descriptors per process.")
    disk_mb: int = Field(64, ge=1, description="Size of the private /tmp, the only writable place.")
    output_bytes: int = Field(1 << 20, ge=1024, description="Largest reply, or printed output.")
    workers: int = Field(
        0, ge=0, description="Completions (and programs' tests) scored at once (0: one per core)."
    )
    unsafe_local: bool = Field(
        False,
        description="Where bubblewrap cannot run: run the code in plain processes with the limits "
        "and an audit hook only (not a wall: code can get around it).",
    )


class SandboxUnavailable(ValueError):
    """bubblewrap is missing or cannot create namespaces here."""


def extract_code(completion: str) -> str:
    """The fenced ```python blocks of a completion, joined; the whole completion when it has none."""
    blocks = re.findall(r"```(?:python|py)?[^\n]*\n(.*?)```", completion, flags=re.S)
    return "\n\n".join(blocks) if blocks else completion


def check_python_tests(
    prompt, completion: str, record: dict, settings: SandboxSettings | None = None
) -> dict[str, bool]:
    """The `python_tests` verifier: `record["tests"]` is test code (asserts), a program's
    `{"input", "output"}`, or a list of them, each run apart against the completion's code; one
    named check per test."""
    tests = record.get("tests")
    if isinstance(tests, (str, dict)):
        tests = [tests]
    if not isinstance(tests, list) or not tests or not all(_is_test(t) for t in tests):
        raise ValueError(
            'the record has no "tests": test code, {"input", "output"}, or a list of them'
        )
    settings = settings or SandboxSettings()
    code = extract_code(completion)
    results: dict[int, bool] = {}
    asserting = [n for n, test in enumerate(tests) if isinstance(test, str)]
    if asserting:
        verdicts = run_test_suite(code, [tests[n] for n in asserting], settings)
        results.update((n, passed) for n, (passed, _) in zip(asserting, verdicts, strict=True))
    programs = [n for n, test in enumerate(tests) if not isinstance(test, str)]
    if programs:
        workers = min(len(programs), settings.workers or len(os.sched_getaffinity(0)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            run = lambda n: run_program(code, tests[n]["input"], tests[n]["output"], settings)[0]
            results.update(zip(programs, pool.map(run, programs), strict=True))
    return {f"test {n + 1}": results[n] for n in range(len(tests))}


def _is_test(test) -> bool:
    return isinstance(test, str) or (
        isinstance(test, dict)
        and isinstance(test.get("input"), str)
        and isinstance(test.get("output"), str)
    )


def run_tests(
    code: str, tests: str, settings: SandboxSettings | None = None, **limits
) -> tuple[bool, str]:
    """One test (assertions) against `code`; (passed, why not)."""
    settings = (settings or SandboxSettings()).model_copy(update=limits)
    return run_test_suite(code, [tests], settings)[0]


def run_test_suite(
    code: str, tests: list[str], settings: SandboxSettings
) -> list[tuple[bool, str]]:
    """Each test (assertions) against a fresh process of `code`; (passed, why not) each. The
    code's sandbox and the tests' sandbox are started once for all of them."""
    suite = [{"source": test, "names": free_names(test)} for test in tests]
    verdicts: dict[int, tuple[bool, str]] = {}
    with _Folders(code, json.dumps(suite)) as (code_folder, tests_folder):
        requests, replies, verdict = os.pipe(), os.pipe(), os.pipe()
        limit, seconds = str(settings.output_bytes), str(settings.seconds)
        serve = [str(requests[0]), str(replies[1]), limit, seconds]
        harness = [str(requests[1]), str(replies[0]), str(verdict[1]), limit, seconds]
        serving = (requests[0], replies[1])
        testing = (requests[1], replies[0], verdict[1])
        with (
            _Sandbox(code_folder, "serve.py", serve, settings, serving) as _,
            _Sandbox(tests_folder, "harness.py", harness, settings, testing),
        ):
            for fd in (*requests, *replies, verdict[1]):
                os.close(fd)
            deadline = time.monotonic() + (settings.seconds + 2) * len(tests) + 5
            for result in _lines_until(verdict[0], deadline, settings.output_bytes, len(tests)):
                verdicts[int(result["test"])] = (bool(result["passed"]), str(result["why"]))
            os.close(verdict[0])
    missing = f"no verdict: its sandbox ran past {settings.seconds:g} s a test, or ended"
    return [verdicts.get(n, (False, missing)) for n in range(len(tests))]


def free_names(source: str) -> list[str]:
    """The names a test reads but never binds: what the completion must define."""
    tree = ast.parse(source)
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return sorted(read - bound - set(dir(builtins)))


def run_program(
    code: str, stdin: str, expected: str, settings: SandboxSettings | None = None, **limits
) -> tuple[bool, str]:
    """`code` run as a script with `stdin`; passed when what it prints is `expected` (compared
    line by line, trailing whitespace ignored)."""
    settings = (settings or SandboxSettings()).model_copy(update=limits)
    with _Folders(code, None) as (code_folder, _):
        stdin_read, stdin_write = os.pipe()
        out_read, out_write = os.pipe()
        with _Sandbox(
            code_folder,
            "solution.py",
            [],
            settings,
            (stdin_read, out_write),
            stdio=(stdin_read, out_write),
        ) as process:
            os.close(stdin_read)
            os.close(out_write)
            feeder = threading.Thread(target=_feed, args=(stdin_write, stdin.encode()), daemon=True)
            feeder.start()
            printed = _read_all(out_read, settings.seconds, settings.output_bytes)
            os.close(out_read)
            stopped = process.stop()
    if printed is None:
        return False, f"timed out after {settings.seconds:g} s" if stopped else "printed too much"
    if _lines(printed.decode("utf-8", "replace")) == _lines(expected):
        return True, ""
    return False, "printed another output"


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


class _Folders:
    """A read-only folder for each sandbox: the completion's code never sees the tests."""

    def __init__(self, code: str, tests: str | None):
        self.code, self.tests = code, tests

    def __enter__(self) -> tuple[Path, Path | None]:
        self.root = Path(tempfile.mkdtemp(prefix="prefopt-sandbox-"))
        self.root.chmod(0o755)  # a sandbox's own user reads it, and never writes
        (self.root / "scratch").mkdir(mode=0o777)  # unsafe_local: where the code may write
        (self.root / "scratch").chmod(0o777)
        code_folder = self._folder("code", ("serve.py", "wire.py", "audit.py"),
                                   {"solution.py": self.code + "\n"})  # fmt: skip
        tests_folder = None
        if self.tests is not None:
            tests_folder = self._folder(
                "tests", ("harness.py", "wire.py"), {"tests.json": self.tests}
            )
        return code_folder, tests_folder

    def _folder(self, name: str, programs: tuple[str, ...], files: dict[str, str]) -> Path:
        folder = self.root / name
        folder.mkdir(mode=0o755)
        for program in programs:
            shutil.copyfile(PROGRAMS / program, folder / program)
        for file, text in files.items():
            (folder / file).write_text(text, encoding="utf-8")
        for path in folder.iterdir():
            path.chmod(0o644)
        return folder

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _Sandbox:
    """One sandboxed process running `program` of `folder` (mounted read-only at /sandbox), with
    `fds` passed through; `stop()` kills it and everything it started, and says whether it was
    still running."""

    def __init__(self, folder, program, args, settings, fds, stdio=None):
        self.folder, self.program, self.args, self.settings = folder, program, args, settings
        self.fds, self.stdio = fds, stdio

    def __enter__(self) -> _Sandbox:
        settings, local = self.settings, require_isolation(self.settings) == "local"
        python = _python()
        if local:
            argv = [python, "-I", "-S", str(self.folder / self.program), *self.args]
            argv += ["--audit"] if self.program == "serve.py" else []
        else:
            argv = [*_bwrap(self.folder, settings, python), "/sandbox/" + self.program, *self.args]
        uid = _host_uid() if os.geteuid() == 0 else None
        stdin, stdout = self.stdio or (subprocess.DEVNULL, subprocess.DEVNULL)
        self.process = subprocess.Popen(
            [*_limits(settings, uid), *argv],
            cwd=self.folder.parent / "scratch" if local else "/",
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            pass_fds=self.fds,
            start_new_session=True,
            env={"PATH": "/usr/bin:/bin"},
            user=uid,
            group=uid,
            extra_groups=[] if uid is not None else None,
        )
        return self

    def stop(self) -> bool:
        running = self.process.poll() is None
        for kill in (lambda: os.killpg(self.process.pid, signal.SIGKILL), self.process.kill):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()
        return running

    def __exit__(self, *exc) -> None:
        self.stop()


def _bwrap(folder: Path, settings: SandboxSettings, python: str) -> list[str]:
    """bubblewrap's command line up to the program: the sandbox every test runs in."""
    prefix = str(Path(python).resolve().parents[1])
    view = ["--ro-bind", "/usr", "/usr"]
    for link in ("lib", "lib64", "bin", "sbin"):
        if Path("/" + link).is_symlink():
            view += ["--symlink", os.readlink("/" + link), "/" + link]
        elif Path("/" + link).is_dir():
            view += ["--ro-bind", "/" + link, "/" + link]
    if not prefix.startswith("/usr"):
        view += ["--ro-bind", prefix, prefix]
    # fmt: off
    return [
        "bwrap", *view, "--ro-bind", str(folder), "/sandbox",
        "--dev", "/dev", "--proc", "/proc", "--size", str(settings.disk_mb << 20), "--tmpfs", "/tmp",
        "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", *_no_nested_userns(),
        "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--chdir", "/tmp",
        python, "-I", "-S",
    ]
    # fmt: on


def _limits(settings: SandboxSettings, uid: int | None) -> list[str]:
    """util-linux's prlimit in front of the command: the limits it runs under. As root each
    sandbox runs as a host user of its own (`uid`), so the process limit counts its processes
    alone; otherwise the limit leaves room for the processes this user already runs."""
    processes = settings.processes + (_processes_of(os.getuid()) if uid is None else 0)
    limits = {
        "as": settings.memory_mb << 20,
        "cpu": int(settings.seconds) + 1,
        "fsize": settings.disk_mb << 20,
        "nofile": settings.open_files,
        "nproc": processes,
        "core": 0,
    }
    return ["prlimit", *(f"--{name}={value}" for name, value in limits.items()), "--"]


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


@functools.cache
def _no_nested_userns() -> list[str]:
    """bubblewrap 0.8's switch that keeps the code from making user namespaces of its own."""
    help_text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True).stdout
    return ["--disable-userns"] if "--disable-userns" in help_text else []


def _host_uid() -> int:
    """As root: a host user no other process has, one per sandbox of this process."""
    return _UID_BASE + (os.getpid() % 100_000) * 1000 + next(_slots) % 1000


@functools.cache
def _python() -> str:
    """An interpreter the sandbox's user may run: this one where every user can, else the
    system's (the programs need only the standard library)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        path = Path(os.path.realpath(candidate))
        readable = all(p.stat().st_mode & 0o001 for p in path.parents)
        if path.is_file() and readable and path.stat().st_mode & 0o005 == 0o005:
            return str(path)
    raise SandboxUnavailable(
        "python_tests needs a Python interpreter every user may run (e.g. /usr/bin/python3)"
    )


def require_isolation(settings: SandboxSettings) -> str:
    """How code will run: "bwrap", or "local" with `unsafe_local` where bubblewrap cannot run;
    SandboxUnavailable (saying what to install) otherwise."""
    if bubblewrap_works():
        return "bwrap"
    if settings.unsafe_local:
        return "local"
    raise SandboxUnavailable(
        "python_tests runs every completion under bubblewrap, which cannot run here "
        f"({_bubblewrap_problem()}). Install it (Debian/Ubuntu: apt-get install bubblewrap; "
        "Fedora: dnf install bubblewrap) and allow user namespaces, or set the verifier's "
        "sandbox option unsafe_local: true to run completions without isolation"
    )


def bubblewrap_works() -> bool:
    """Whether a sandbox starts here (bwrap installed, user namespaces allowed)."""
    return not _bubblewrap_problem()


@functools.cache
def _bubblewrap_problem() -> str:
    """Why no sandbox starts here ("" when one does)."""
    for tool in ("bwrap", "prlimit"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        python = _python()
    except SandboxUnavailable as error:
        return str(error)
    settings = SandboxSettings()
    uid = _host_uid() if os.geteuid() == 0 else None
    command = [*_limits(settings, uid), *_bwrap(Path("/usr"), settings, python), "-c", "pass"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, user=uid, group=uid,
        extra_groups=[] if uid is not None else None,
    )  # fmt: skip
    if result.returncode != 0:
        return result.stderr.strip()[:300] or f"exit status {result.returncode}"
    return ""


def _lines_until(fd: int, deadline: float, limit: int, count: int):
    """Up to `count` messages from `fd`, each within `limit` bytes, until `deadline`."""
    reader = wire.Reader(fd, limit)
    for _ in range(count):
        try:
            message = reader.receive(max(deadline - time.monotonic(), 0.0))
        except (TimeoutError, ValueError):
            return
        if message is None:
            return
        yield message


def _read_all(fd: int, seconds: float, limit: int) -> bytes | None:
    """What `fd` gives until it closes, within `seconds` and `limit` bytes."""
    deadline, chunks, size = time.monotonic() + seconds, [], 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
    return None


def _feed(fd: int, data: bytes) -> None:
    """Write a program's input and close it (a program that does not read it gets EPIPE)."""
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BrokenPipeError:
        pass
