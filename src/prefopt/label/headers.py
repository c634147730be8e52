"""Security headers on every response. The pages load their scripts and styles from /assets/ only,
so the Content-Security-Policy allows no inline script or style at all: text that ever got into a
page as markup could not run."""

from __future__ import annotations

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",  # a JSON answer is never read as a page or a script
    "x-frame-options": "DENY",  # no framing (older browsers; frame-ancestors for the rest)
    "referrer-policy": "no-referrer",
}


class SecurityHeaders:
    """A pure ASGI middleware: the headers go on every response, errors and 413s included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (name.encode(), value.encode())
                    for name, value in HEADERS.items()
                    if name.encode() not in present
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, with_headers)
