"""The python_tests verifier runs a completion's code against its record's tests in a sandbox:
right code passes, wrong code fails, and every hostile completion fails without hanging or
harming the test process (each tried for real)."""

import os
import socket
import threading
import time

import pytest

from prefopt.oracles import ListToJudge, make_oracle
from prefopt.oracles.sandbox import extract_code, run_program, run_tests

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


def test_right_code_passes_and_wrong_code_fails():
    assert run_tests("def add(a, b):\n    return a + b", TESTS) == (True, "")
    passed, why = run_tests("def add(a, b):\n    return a - b", TESTS)
    assert not passed and "AssertionError" in why
    assert not run_tests("def add(a, b) return", TESTS)[0]  # a syntax error


def test_the_code_of_fenced_blocks_is_what_runs():
    completion = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nHope it helps."
    assert extract_code(completion) == "def add(a, b):\n    return a + b\n"
    oracle = make_oracle("verifier", {"function": "python_tests"})
    judgement = oracle.judge(
        [
            ListToJudge(
                "add two numbers",
                (completion, "```python\ndef add(a, b): return 0\n```"),
                {"tests": [TESTS, "assert add(0, 0) == 0"]},
            )
        ]
    )[0]
    assert judgement.scores == (1.0, 0.5) and judgement.details[1] == {
        "test 1": False,
        "test 2": True,
    }


HOSTILE = {
    "an infinite loop": "while True:\n    pass",
    "a sleep past the limit": "import time\ntime.sleep(60)",
    "a crash": "import ctypes\nctypes.string_at(0)",
    "a fork storm": "import os\nwhile True:\n    os.fork()",
    "gigabytes of output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "a memory bomb": "x = bytearray(8 << 30)",
}


# a shell or a subprocess runs inside the sandbox and reaches nothing outside it (the escapes below)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_completion_fails_quickly(name):
    started = time.monotonic()
    passed, why = run_tests(HOSTILE[name] + "\ndef add(a, b):\n    return a + b", TESTS, seconds=3)
    assert not passed and why
    assert time.monotonic() - started < 10


def test_files_outside_its_directory_are_out_of_reach(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for attack in (
        f"import os\nos.remove({str(victim)!r})",
        f"open({str(victim)!r}, 'w').write('gone')",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"import os\nfd = os.open({str(victim)!r}, os.O_WRONLY | os.O_TRUNC)",
    ):
        passed, why = run_tests(attack + "\ndef add(a, b):\n    return a + b", TESTS, seconds=3)
        assert not passed, attack
    assert victim.read_text() == "precious"
    assert run_tests(
        "open('scratch.txt', 'w').write('mine')\ndef add(a, b):\n    return a + b", TESTS
    )[0]


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    code = (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "def add(a, b):\n    return a + b"
    )
    passed, why = run_tests(code, TESTS, seconds=5)
    server.close()
    assert not passed and not accepted


def test_the_test_process_is_unharmed():
    before = os.getcwd(), dict(os.environ)
    run_tests("import os\nos.chdir('/')\nos.environ['X'] = '1'", TESTS)
    assert (os.getcwd(), dict(os.environ)) == before


# ----- what a policy trained on these verdicts would find (each passed before the sandbox) -----

ADD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"

EARLY_EXITS = {
    "os._exit(0) at load": "import os\nos._exit(0)\n" + WRONG,
    "sys.exit(0) at load": "import sys\n" + WRONG + "sys.exit(0)\n",
    "os._exit(0) in the function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "an exit hook that turns the failure into status 0": (
        "import atexit, os\natexit.register(lambda: os._exit(0))\n" + WRONG
    ),
    "an except hook that exits with 0": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n"
    + WRONG,
    "printing the pass marker and exiting": "import os\nprint('OK')\nos._exit(0)\n" + WRONG,
}


@pytest.mark.parametrize("name", list(EARLY_EXITS))
def test_an_early_exit_in_any_form_is_a_failure(name):
    passed, why = run_tests(EARLY_EXITS[name], TESTS, seconds=5)
    assert not passed, why


EQUAL_TO_EVERYTHING = {
    "a class whose __eq__ is always true": "class Any:\n    def __eq__(self, other):\n        return True\n"
    "def add(a, b):\n    return Any()\n",
    "an int subclass equal to everything": "class Int(int):\n    def __eq__(self, other):\n"
    "        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)\n",
    "unittest.mock.ANY": "from unittest import mock\ndef add(a, b):\n    return mock.ANY\n",
    "a str subclass equal to everything": "class S(str):\n    def __eq__(self, other):\n"
    "        return True\ndef add(a, b):\n    return S('no')\n",
}


@pytest.mark.parametrize("name", list(EQUAL_TO_EVERYTHING))
def test_an_object_equal_to_everything_is_not_a_right_answer(name):
    passed, why = run_tests(EQUAL_TO_EVERYTHING[name], TESTS, seconds=5)
    assert not passed, why


def test_values_arrive_as_data_of_their_own_type():
    code = (
        "def pair(): return (1, 2)\ndef items(): return {'a': [1, 2.5], 3: {4}}\n"
        "def raw(): return b'\\x00'\ndef nan(): return float('nan')\n"
        "class Stack:\n    def __init__(self): self.items = []\n"
        "    def push(self, x): self.items.append(x)\n    def pop(self): return self.items.pop()\n"
        "def evens(n): return (i for i in range(n) if i % 2 == 0)\n"
        "def fail(x): raise ValueError('bad ' + str(x))\n"
    )
    tests = (
        "import math\nassert pair() == (1, 2) and pair() != [1, 2]\n"
        "assert items() == {'a': [1, 2.5], 3: {4}}\nassert raw() == b'\\x00'\n"
        "assert math.isnan(nan())\ns = Stack()\ns.push(3)\ns.push(4)\n"
        "assert s.pop() == 4 and s.items == [3]\nassert list(evens(7)) == [0, 2, 4, 6]\n"
        "try:\n    fail(1)\nexcept ValueError as error:\n    assert 'bad 1' in str(error)\n"
        "else:\n    raise AssertionError('no error')\n"
    )
    assert run_tests(code, tests) == (True, "")


HOOK_TAMPERING = (
    "import sys\nhook = sys.modules['__main__']\n"
    "for table in ('BLOCKED', 'WRITES'):\n    getattr(hook, table, set()).clear()\n"
)
ESCAPES = {
    "the audit hook's tables emptied, then a shell": HOOK_TAMPERING
    + "import os\nos.system('echo escaped > {marker}')\n",
    "a process started through a call that raises no audit event": (
        "import _posixsubprocess, os, time\nr, w = os.pipe()\n"
        "_posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'echo escaped > {marker}'], [b'/bin/sh'],"
        " True, (), None, None, -1, -1, -1, -1, -1, -1, r, w, True, True, -1, None, None, None,"
        " -1, None, False)\ntime.sleep(1)\n"
    ),
    "a write through dir_fd": (
        "import os\nfolder = os.open('/tmp', os.O_RDONLY)\n"
        "fd = os.open('{name}', os.O_CREAT | os.O_WRONLY, dir_fd=folder)\nos.write(fd, b'escaped')\n"
    ),
    "a rename into another folder through dst_dir_fd": (
        "import os\nopen('here', 'w').write('escaped')\nfolder = os.open('/tmp', os.O_RDONLY)\n"
        "os.rename('here', '{name}', dst_dir_fd=folder)\n"
    ),
    "a named pipe made outside": "import os\nos.mkfifo('{marker}')\n",
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_code_cannot_write_outside_its_sandbox(name):
    marker = f"/tmp/prefopt-escape-{os.getpid()}-{time.monotonic_ns()}"
    code = ESCAPES[name].format(marker=marker, name=marker.removeprefix("/tmp/")) + ADD
    try:
        run_tests(code, TESTS, seconds=5)
        time.sleep(0.5)  # a process it left behind would write by now
        assert not os.path.exists(marker), f"{name}: wrote {marker}"
    finally:
        if os.path.exists(marker):
            os.remove(marker)


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    if text.encode() in handle.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_no_process_outlives_its_test():
    seconds = f"{time.monotonic_ns() % 1000}.{os.getpid()}"  # sleep's argument marks the process
    code = (
        HOOK_TAMPERING
        + "import os\nif os.fork() == 0:\n    os.setsid()\n"
        + f"    os.execv('/bin/sleep', ['sleep', '{seconds}'])\n"
        + ADD
    )
    run_tests(code, TESTS, seconds=5)
    time.sleep(0.5)
    left = _processes_with(seconds)
    for pid in left:
        os.kill(pid, 9)
    assert not left, "a process the code started outlived its test"


def test_the_process_that_asks_is_out_of_sight():
    """The code sees neither the verifier's process nor any other process of the machine."""
    code = (
        "import os\ndef asker():\n    try:\n"
        "        return open(f'/proc/{os.getppid()}/cmdline', 'rb').read().decode(errors='replace')\n"
        "    except OSError as error:\n        return str(error)\n"
        "def others():\n    return len([p for p in os.listdir('/proc') if p.isdigit()])\n"
    )
    me = open(f"/proc/{os.getpid()}/cmdline", "rb").read().split(b"\0")[0].decode()
    assert not run_tests(code, f"assert {me!r} in asker()", seconds=5)[0]
    assert not run_tests(code, "assert others() > 10", seconds=5)[0]


def test_the_caller_reads_nothing_the_code_planted(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the-secret-42")
    secret.chmod(0o600)
    code = (
        "import os\nfor name in ('output.txt', 'solution.py'):\n    try:\n        os.remove(name)\n"
        f"    except OSError:\n        pass\n    os.symlink({str(secret)!r}, name)\n" + WRONG
    )
    passed, why = run_tests(code, TESTS, seconds=5)
    assert not passed and "the-secret-42" not in why


def test_disk_and_descriptors_are_limited():
    code = (
        "import os\ndef fill(megabytes):\n    written = 0\n    try:\n"
        "        for n in range(megabytes):\n"
        "            with open(f'fill-{n}', 'wb') as handle:\n"
        "                handle.write(b'x' * (1 << 20))\n            written += 1\n"
        "    except OSError:\n        pass\n    return written\n"
        "def hold(count):\n    kept = []\n    try:\n        for _ in range(count):\n"
        "            kept.append(open('/dev/null'))\n    except OSError:\n        pass\n"
        "    return len(kept)\n"
    )
    assert not run_tests(code, "assert fill(256) == 256", seconds=20)[0]
    assert not run_tests(code, "assert hold(600) == 600", seconds=5)[0]
    assert run_tests(code, "assert fill(4) == 4 and hold(8) == 8", seconds=10)[0]


def test_a_program_reads_its_input_and_is_judged_by_what_it_prints():
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert run_program(code, "2 3\n", "5\n") == (True, "")
    assert not run_program(code, "2 3\n", "6\n")[0]
    exit_early = "import os\nos._exit(0)\n"
    assert not run_program(exit_early, "2 3\n", "5\n")[0]
    oracle = make_oracle("verifier", {"function": "python_tests"})
    record = {"tests": [{"input": "1 1\n", "output": "2\n"}, {"input": "2 2\n", "output": "4"}]}
    judgement = oracle.judge([ListToJudge("add", (code, "print(2)"), record)])[0]
    assert judgement.scores == (1.0, 0.5)


def test_without_bubblewrap_python_tests_is_refused_unless_unsafe_local(monkeypatch):
    import prefopt.oracles.sandbox as sandbox

    monkeypatch.setattr(sandbox, "bubblewrap_works", lambda: False)
    with pytest.raises(ValueError, match="apt-get install bubblewrap"):
        make_oracle("verifier", {"function": "python_tests"})
    oracle = make_oracle(
        "verifier", {"function": "python_tests", "sandbox": {"unsafe_local": True}}
    )
    judgement = oracle.judge([ListToJudge("add", (ADD, WRONG), {"tests": TESTS})])[0]
    assert judgement.scores == (1.0, 0.0)
