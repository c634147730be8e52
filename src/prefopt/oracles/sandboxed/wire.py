"""The values that cross between a completion's process and the tests: data only, as JSON with
tags for what JSON lacks (tuples, sets, bytes, dicts with any keys, complex numbers, NaN and the
infinities). A value is rebuilt from its base type's contents, so a subclass that overrides `__eq__`
(an object "equal to everything") arrives as the plain value it holds; anything else stays in its
process and is named by a handle."""

import json
import math
import os
import select
import time

MAX_DEPTH = 64


class NotData(Exception):
    """The value (or a part of it) is not plain data."""


def encode(value, depth=0):
    """A JSON-ready form of `value`; NotData for what is not plain data."""
    if depth > MAX_DEPTH:
        raise NotData("nested too deeply")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        return int.__int__(value)  # the base type's value, whatever the subclass overrides
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else {"$float": repr(number)}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        real, imag = complex.real.__get__(value), complex.imag.__get__(value)
        return {"$complex": [encode(real), encode(imag)]}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, list):
        return [encode(item, depth + 1) for item in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"$tuple": [encode(item, depth + 1) for item in tuple.__iter__(value)]}
    if isinstance(value, (set, frozenset)):
        kind = "$frozenset" if isinstance(value, frozenset) else "$set"
        items = frozenset.__iter__(value) if kind == "$frozenset" else set.__iter__(value)
        return {kind: [encode(item, depth + 1) for item in items]}
    if isinstance(value, dict):
        pairs = dict.items(value)
        return {"$dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in pairs]}
    raise NotData(type(value).__name__)


def decode(value):
    """The Python value of an encoded form."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    ((tag, body),) = value.items()
    if tag == "$float":
        return float(body)
    if tag == "$complex":
        return complex(decode(body[0]), decode(body[1]))
    if tag == "$bytes":
        return bytes.fromhex(body)
    if tag == "$tuple":
        return tuple(decode(item) for item in body)
    if tag == "$set":
        return {decode(item) for item in body}
    if tag == "$frozenset":
        return frozenset(decode(item) for item in body)
    if tag == "$dict":
        return {decode(k): decode(v) for k, v in body}
    raise ValueError("unknown tag " + repr(tag))


def send(fd, message):
    """Write one message, a line of JSON, to descriptor `fd`."""
    data = (json.dumps(message, allow_nan=False) + "\n").encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]


class Reader:
    """Messages from descriptor `fd`, one line each, read without buffering past a line's end
    that `select` could not see."""

    def __init__(self, fd, limit):
        self.fd, self.limit, self.buffer = fd, limit, b""

    def receive(self, timeout=None):
        """The next message; None at the end of the stream; TimeoutError when none comes within
        `timeout` seconds; ValueError for a line over the limit or not JSON."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if len(self.buffer) > self.limit:
                raise ValueError("a message over the size limit")
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            if left is not None and not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError(f"no message within {timeout:g} s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        if len(line) > self.limit:
            raise ValueError("a message over the size limit")
        return json.loads(line)
