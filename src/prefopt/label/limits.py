"""Requests are bounded before they cost anything: a body larger than the limit is refused with
413 from its declared length, or as soon as the bytes streamed past it, before it is parsed and
before the token is checked. The body is read into memory here, at most `max_bytes` of it, so
several large requests at once cost at most that much each."""

from __future__ import annotations

import json

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
        detail = json.dumps(
            {"detail": f"the request body is over {self.max_bytes} bytes", "field": "body"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(detail)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": detail})
