"""Runs in the completion's sandbox. For each test the harness starts, a fresh process (a fork of
this one) loads the completion's code as a module and answers the test's calls with data
(`wire`) or the name of the exception raised; this process only passes requests and replies
between the harness and that worker, and stops a worker that overruns the test's time. What the
worker answers is compared by the harness, in another sandbox: nothing here decides a verdict.

    python -I -S serve.py REQUESTS_FD REPLIES_FD MESSAGE_LIMIT SECONDS [--audit]

Requests: {"op": "start"} (a fresh worker), {"op": "call", "target": NAME or HANDLE, "args":
[...], "kwargs": [...]}, {"op": "getattr" | "getitem" | "len" | "bool" | "iter" | "repr",
"target": HANDLE, ...}. Replies: {"value": DATA}, {"handle": N, "type": NAME} or {"raised": TYPE,
"message": TEXT}."""

import os
import signal
import sys
import time

if __package__:  # imported as part of prefopt
    from prefopt.oracles.sandboxed import wire
else:  # a program in a sandbox, where only the standard library and this folder are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_ITEMS = 100_000  # items of an iterator turned into data


def reply_for(value, handles):
    try:
        return {"value": wire.encode(value)}
    except wire.NotData:
        handles.append(value)
        return {"handle": len(handles) - 1, "type": type(value).__name__}


def answer(request, namespace, handles):
    op, target = request["op"], request["target"]
    if isinstance(target, str):
        if target not in namespace:
            raise NameError("the code defines no " + repr(target))
        subject = namespace[target]
    else:
        subject = handles[target]
    if op == "call":
        args = wire.decode(request.get("args", []))
        kwargs = dict(wire.decode(request.get("kwargs", [])))
        return subject(*args, **kwargs)
    if op == "getattr":
        return getattr(subject, request["name"])
    if op == "getitem":
        return subject[wire.decode(request["key"])]
    if op == "len":
        return len(subject)
    if op == "bool":
        return bool(subject)
    if op == "repr":
        return repr(subject)[:10_000]
    if op == "iter":
        items = []
        for item in subject:
            items.append(item)
            if len(items) > MAX_ITEMS:
                raise OverflowError(f"an iterator of over {MAX_ITEMS} items")
        return items
    raise ValueError("unknown request " + repr(op))


def work(requests_fd, replies_fd, limit):
    """A worker: the completion's code, then its answers, until the requests end."""
    requests = wire.Reader(requests_fd, limit)
    if AUDIT:  # no sandbox (unsafe_local): the audit hook is all there is
        import audit

        audit.install(os.getcwd())
    sys.stdout = sys.stderr  # what the code prints is not a reply
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    loading_error = None
    try:
        with open(os.path.join(HERE, "solution.py"), encoding="utf-8") as handle:
            source = handle.read()
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as error:  # SystemExit too: the code's own exit is a failed load
        loading_error = error
    handles = []
    while True:
        request = requests.receive()
        if request is None:
            os._exit(0)
        try:
            if loading_error is not None:
                raise loading_error
            reply = reply_for(answer(request, namespace, handles), handles)
        except BaseException as error:
            reply = {"raised": type(error).__name__, "message": str(error)[:2000]}
        wire.send(replies_fd, reply)


class Worker:
    """A fresh process for one test, in a process group of its own (stopped with it)."""

    def __init__(self, limit):
        to_worker, from_harness = os.pipe()
        from_worker, to_harness = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.setpgid(0, 0)
            os.close(from_harness)
            os.close(from_worker)
            for fd in PASSED:  # the worker never holds the harness's channel
                os.close(fd)
            try:
                work(to_worker, to_harness, limit)
            finally:
                os._exit(0)
        os.close(to_worker)
        os.close(to_harness)
        self.requests, self.replies = from_harness, wire.Reader(from_worker, limit)

    def ask(self, request, seconds):
        try:
            wire.send(self.requests, request)
            reply = self.replies.receive(seconds)
        except TimeoutError:
            return {"raised": "TimeoutError", "message": f"no answer within {seconds:g} s"}
        except (OSError, ValueError) as error:
            return {"raised": "RuntimeError", "message": f"the code's process failed: {error}"}
        if reply is None:
            return {"raised": "RuntimeError", "message": "the code's process ended"}
        return reply

    def stop(self):
        for kill in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, 9)):
            try:
                kill()
            except OSError:
                pass
        os.waitpid(self.pid, 0)
        os.close(self.requests)
        os.close(self.replies.fd)


PASSED = ()  # the descriptors of the harness's channel
AUDIT = False


def main():
    global PASSED, AUDIT
    requests_fd, replies_fd, limit = (int(arg) for arg in sys.argv[1:4])
    seconds = float(sys.argv[4])
    PASSED, AUDIT = (requests_fd, replies_fd), "--audit" in sys.argv
    requests, worker, started = wire.Reader(requests_fd, limit), None, time.monotonic()
    while True:
        request = requests.receive()
        if request is None or request.get("op") == "start":
            if worker is not None:
                worker.stop()
            if request is None:
                return
            worker, started = Worker(limit), time.monotonic()
            wire.send(replies_fd, {"value": None})
            continue
        left = max(seconds - (time.monotonic() - started), 0.001)
        wire.send(replies_fd, worker.ask(request, left))


if __name__ == "__main__":
    main()
