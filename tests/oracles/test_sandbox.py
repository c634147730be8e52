"""The python_tests verifier runs a completion's code against its record's tests in a sandbox:
right code passes, wrong code fails, and every hostile completion fails without hanging or
harming the test process (each tried for real)."""

import os
import socket
import threading
import time

import pytest

from prefopt.oracles import ListToJudge, make_oracle
from prefopt.oracles.sandbox import extract_code, run_tests

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
    "os.system": "import os\nassert os.system('true') == 0",
    "a subprocess": "import subprocess\nsubprocess.run(['true'], check=True)",
    "gigabytes of output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "a memory bomb": "x = bytearray(8 << 30)",
}


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
