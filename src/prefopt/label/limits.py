"""Requests are bounded before they cost anything: a body larger than the limit is refused with
413 from its declared length, or as soon as the bytes streamed past it, before it is parsed and
before the token is checked. The body is read into memory here, at most `max_bytes` of it, so
several large requests at once cost at most that much each. A request that changes state from
another site (another origin, another port of this host included) is refused with 403, and
failed logins are rate limited (429)."""

from __future__ import annotations

import collections
import json
import threading
import time

# 1 MiB: a label with a 2,000-character comment is a few KB; admin priorities fit too
MAX_BODY_BYTES = 1 << 20


class BodyLimit:
    """A pure ASGI middleware around the whole app."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:  # streamed without a length, or longer than it said
                return await self._refuse(send)
            chunks.append(body)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        message = f"the request body is over {self.max_bytes} bytes"
        # the rest of the body is never read: the connection cannot carry another request
        await _refuse(send, 413, message, field="body", close=True)


SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")


class SameOrigin:
    """A pure ASGI middleware: a request that can change state (POST, DELETE, …) is refused
    with 403 when the browser says it comes from another origin: `Sec-Fetch-Site` other than
    same-origin or none, or, from a browser too old to send that, an `Origin` unlike this
    server's scheme, host and port (a page on another port of the same host is another origin).
    Programs send neither header and are not affected. The session cookie's SameSite=Strict does
    not cover a page on another port, which is the same site."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"].encode() not in SAFE_METHODS:
            headers = dict(scope["headers"])
            fetched_from = headers.get(b"sec-fetch-site")
            origin = headers.get(b"origin")
            own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1')}"
            if fetched_from is not None:
                foreign = fetched_from not in (b"same-origin", b"none")
            else:
                foreign = origin is not None and origin.decode("latin-1") != own
            if foreign:
                return await _refuse(send, 403, "a request from another site changes nothing here")
        return await self.app(scope, receive, send)


class FailedLogins:
    """Failed logins in the last `window` seconds, per client address and over all of them: past
    `per_address` (or `overall`) every login from that address (or any) is refused for a while,
    so that guessing a token costs time (429, with Retry-After)."""

    def __init__(self, per_address: int = 10, overall: int = 100, window: float = 60.0):
        self.per_address, self.overall, self.window = per_address, overall, window
        self.failures: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.lock = threading.Lock()

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again (0: now)."""
        with self.lock:
            now = time.monotonic()
            for times in self.failures.values():
                while times and times[0] <= now - self.window:
                    times.popleft()
            mine, everyone = (
                self.failures[address],
                [t for ts in self.failures.values() for t in ts],
            )
            waits = [0.0]
            if len(mine) >= self.per_address:
                waits.append(mine[0] + self.window - now)
            if len(everyone) >= self.overall:
                waits.append(min(everyone) + self.window - now)
            return max(waits)

    def failed(self, address: str) -> None:
        with self.lock:
            self.failures[address].append(time.monotonic())


async def _refuse(
    send, status: int, message: str, field: str | None = None, close: bool = False
) -> None:
    """The API's error shape, {"detail", "field"}, from below the app."""
    detail = json.dumps({"detail": message, "field": field}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(detail)).encode()),
    ]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + ([(b"connection", b"close")] if close else []),
        }
    )
    await send({"type": "http.response.body", "body": detail})
