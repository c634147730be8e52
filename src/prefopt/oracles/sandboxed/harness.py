"""Runs in its own sandbox, apart from the completion's: executes each test (trusted code from the
record, e.g. `assert add(2, 2) == 4`) against a fresh worker of the completion's code, with every
name the test uses but does not define standing for the completion's object of that name, reached
only through requests and replies of plain data (`wire`). The comparisons happen here, on data;
each test's verdict goes to the process that asked, on a descriptor the completion's sandbox
does not hold.

    python -I -S harness.py REQUESTS_FD REPLIES_FD VERDICTS_FD MESSAGE_LIMIT SECONDS

tests.json: [{"source": TEST, "names": [NAMES IT USES BUT DOES NOT DEFINE]}, ...] (the names are
found by the process that asks, so this one imports nothing it does not need)."""

import builtins
import json
import os
import sys

if __package__:  # imported as part of prefopt
    from prefopt.oracles.sandboxed import wire
else:  # a program in a sandbox, where only the standard library and this folder are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire

HERE = os.path.dirname(os.path.abspath(__file__))


class Broken(Exception):
    """The completion's sandbox stopped answering (it ended or broke the protocol)."""


class Channel:
    def __init__(self, requests_fd, replies_fd, limit, seconds):
        self.requests, self.replies, self.seconds = (
            requests_fd,
            wire.Reader(replies_fd, limit),
            seconds,
        )

    def ask(self, request):
        try:
            wire.send(self.requests, request)
            reply = self.replies.receive(self.seconds + 1)  # the sandbox stops its worker first
        except (OSError, ValueError, TimeoutError) as error:
            raise Broken(f"the code's sandbox broke the channel: {error}") from None
        if reply is None:
            raise Broken("the code's sandbox ended before answering")
        if not isinstance(reply, dict):
            raise Broken("the code's sandbox answered something that is not a reply")
        if "raised" in reply:
            raise _exception(reply)
        if "handle" in reply:
            return Remote(self, reply["handle"], str(reply.get("type", "object")))
        if "value" in reply:
            return wire.decode(reply["value"])
        raise Broken("the code's sandbox answered something that is not a reply")


def _exception(reply):
    """The completion's exception as the builtin class of that name (so `except ValueError` in
    a test works), else a RuntimeError naming it."""
    kind, message = str(reply["raised"]), str(reply.get("message", ""))
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return RuntimeError(f"{kind}: {message}")


class Remote:
    """An object of the completion's process. It is equal only to itself: every comparison a
    test makes is on data, never decided by the completion's code."""

    def __init__(self, channel, target, kind):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_kind", kind)

    def _ask(self, op, **fields):
        return self._channel.ask(dict(op=op, target=self._target, **fields))

    def __call__(self, *args, **kwargs):
        encoded = {"args": wire.encode(list(args)), "kwargs": wire.encode(list(kwargs.items()))}
        return self._ask("call", **encoded)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __getitem__(self, key):
        return self._ask("getitem", key=wire.encode(key))

    def __len__(self):
        return self._ask("len")

    def __bool__(self):
        return self._ask("bool") is True

    def __iter__(self):
        return iter(self._ask("iter"))

    def __repr__(self):
        return f"<{self._kind} of the completion: {self._ask('repr')}>"

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def run(test, channel):
    """One test against a fresh worker: (passed, why not)."""
    source = test["source"]
    try:
        channel.ask({"op": "start", "target": None})
        namespace = {"__name__": "__main__"}
        namespace.update({name: Remote(channel, name, "name") for name in test["names"]})
        exec(compile(source, "tests.py", "exec"), namespace)
    except BaseException as error:
        return False, _why(error, source)
    return True, ""


def _why(error, source):
    """The exception and the test's line it came from."""
    line, trace = None, error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == "tests.py":
            line = trace.tb_lineno
        trace = trace.tb_next
    text = type(error).__name__ + (f": {error}" if str(error) else "")
    lines = source.splitlines()
    if line is not None and 0 < line <= len(lines):
        text += f" (at: {lines[line - 1].strip()})"
    return text


def main():
    requests_fd, replies_fd, verdicts_fd, limit = (int(arg) for arg in sys.argv[1:5])
    channel = Channel(requests_fd, replies_fd, limit, float(sys.argv[5]))
    sys.stdout = sys.stderr
    with open(os.path.join(HERE, "tests.json"), encoding="utf-8") as handle:
        tests = json.load(handle)
    for number, test in enumerate(tests):
        passed, why = run(test, channel)
        wire.send(verdicts_fd, {"test": number, "passed": passed, "why": why})


if __name__ == "__main__":
    main()
