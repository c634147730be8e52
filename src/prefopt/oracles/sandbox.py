"""The `python_tests` verifier (the CodeDPO setting, Zhang et al. 2024): the code in a completion
runs against the record's tests in a separate process, in a temporary directory of its own, with
a wall-time limit, CPU-time, memory, file-size and process limits, no network, and a cap on
output. An infinite loop, a crash, a fork storm, a shell command, gigabytes of output or a write
outside its directory fails the completion; it never hangs or harms the process that asked.

Layers, each enough for some of it: resource limits (setrlimit) in the child; as root, the child
runs as the unprivileged user `nobody` in a network namespace of its own (no interface but a
down loopback); and a Python audit hook (PEP 578) installed before the code runs, which refuses
to start processes, open sockets, or write, rename or delete outside the working directory."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

LIMITS = {"seconds": 10.0, "memory_mb": 512, "output_bytes": 1 << 20, "processes": 64}

# runs first in the child: the audit hook, then the solution and its tests
_BOOTSTRAP = r"""
import os, sys
HOME = os.path.realpath(os.getcwd())
BLOCKED = {"os.system", "os.exec", "os.fork", "os.forkpty", "os.spawn", "os.posix_spawn", "subprocess.Popen",
           "socket.connect", "socket.bind", "socket.sendto", "pty.spawn", "ctypes.dlopen", "os.kill", "os.killpg"}
WRITES = {"os.remove", "os.rmdir", "os.rename", "os.truncate", "shutil.rmtree", "shutil.move", "os.chmod",
          "os.chown", "os.mkdir", "os.symlink", "os.link"}

def inside(path):
    if isinstance(path, int):
        return True
    path = os.fsdecode(path)
    return os.path.realpath(os.path.join(HOME, path)).startswith(HOME + os.sep)

def hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event in WRITES and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, int))):
        raise PermissionError(f"sandbox: {event} outside the working directory")
    if event == "open":
        path, mode, flags = args
        writes = any(m in str(mode) for m in "wax+") if mode is not None else bool(
            flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        if writes and not inside(path):
            raise PermissionError("sandbox: writing outside the working directory")

sys.addaudithook(hook)
sys.argv = ["solution.py"]
with open("solution.py") as handle:
    source = handle.read()
exec(compile(source, "solution.py", "exec"), {"__name__": "__main__"})
"""


def extract_code(completion: str) -> str:
    """The fenced ```python blocks of a completion, joined; the whole completion when it has none."""
    blocks = re.findall(r"```(?:python|py)?[^\n]*\n(.*?)```", completion, flags=re.S)
    return "\n\n".join(blocks) if blocks else completion


def run_tests(
    code: str,
    tests: str,
    *,
    seconds: float = LIMITS["seconds"],
    memory_mb: int = LIMITS["memory_mb"],
    output_bytes: int = LIMITS["output_bytes"],
    processes: int = LIMITS["processes"],
) -> tuple[bool, str]:
    """Run `code` then `tests` (plain asserts) in a sandboxed child; (passed, why not)."""
    with tempfile.TemporaryDirectory(prefix="prefopt-sandbox-") as folder:
        home = Path(folder)
        (home / "solution.py").write_text(code + "\n\n" + tests + "\n", encoding="utf-8")
        (home / "bootstrap.py").write_text(_BOOTSTRAP, encoding="utf-8")
        os.chmod(home, 0o777)  # the unprivileged user may write here, and only here
        output = home / "output.txt"
        with output.open("wb") as sink:
            os.chmod(output, 0o666)
            python, unprivileged = _interpreter()
            child = subprocess.Popen(
                [python, "-I", "-S", "bootstrap.py"],
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: _confine(
                    seconds, memory_mb, output_bytes, processes, unprivileged
                ),
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "HOME": str(home)},
            )
            try:
                code_returned = child.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                code_returned = None
            finally:
                _kill_group(child.pid)
                child.wait()
        tail = output.read_bytes()[-2000:].decode("utf-8", "replace").strip()
    if code_returned is None:
        return False, f"timed out after {seconds:g} s"
    if code_returned == 0:
        return True, ""
    if code_returned < 0:
        return False, f"killed by {signal.Signals(-code_returned).name}" + (
            f": {tail[-300:]}" if tail else ""
        )
    return False, tail.splitlines()[-1] if tail else f"exit status {code_returned}"


def _interpreter() -> tuple[str, bool]:
    """A Python the child can run, and whether it runs as `nobody`: as root, an interpreter that
    every user may execute (this one, or the system's; the code needs only the standard library)."""
    if os.geteuid() != 0:
        return sys.executable, False
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        path = Path(os.path.realpath(candidate))
        if (
            path.is_file()
            and all(p.stat().st_mode & 0o001 for p in path.parents)
            and path.stat().st_mode & 0o005
        ):
            return str(path), True
    return sys.executable, False  # no interpreter others may run: limits and the audit hook only


def _confine(
    seconds: float, memory_mb: int, output_bytes: int, processes: int, unprivileged: bool
) -> None:
    """In the child, before it runs anything: limits, then (as root) a network namespace and user nobody."""
    cpu = int(seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() == 0:
        _unshare_network()
    if unprivileged:
        os.setgroups([])
        os.setgid(65534)
        # nobody: the process limit applies, and files of other users are out of reach
        os.setuid(65534)
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def _unshare_network() -> None:
    clone_newnet = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(clone_newnet) != 0:  # not allowed here (a container without the capability)
        pass  # the audit hook still refuses sockets


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_python_tests(prompt, completion: str, record: dict) -> dict[str, bool]:
    """The `python_tests` verifier: `record["tests"]` is test code (asserts) or a list of them,
    each run apart against the completion's code; one named check per test."""
    tests = record.get("tests")
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError('the record has no "tests": test code, or a list of it')
    code = extract_code(completion)
    return {f"test {n}": run_tests(code, test)[0] for n, test in enumerate(tests, 1)}
