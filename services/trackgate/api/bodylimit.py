"""A size limit on request bodies, enforced before a body is read whole.

A request whose ``Content-Length`` is above the limit is answered 413 at
once: no route, dependency or token check runs, no byte of its body is read
(and no ``100 Continue`` is sent to a client that asked for one). A body
without a length (chunked transfer) is counted as its chunks arrive; the
chunk that passes the limit raises :class:`~trackgate.api.errors.BodyTooLarge`
inside the read, and the error handlers answer 413. Either way the process
holds at most the limit plus one chunk of a body. Both answers have the
API's one error shape (code ``body_too_large``).

Chunks that arrive after the response started (a streaming route that
listens for the client going away) are not counted: nothing buffers them.

FastAPI's own ``max_body_size`` is not used: a body declared too large is
answered there in plain text, whatever the error handlers say.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trackgate.api.errors import BodyTooLarge, body_too_large, error_response


class BodyLimitMiddleware:
    """Refuses request bodies longer than ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await error_response(body_too_large(limit))(scope, receive, send)
            return
        received = 0
        responding = False

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and not responding:
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_watched(message: Message) -> None:
            nonlocal responding
            if message["type"] == "http.response.start":
                responding = True
            await send(message)

        await self.app(scope, receive_counted, send_watched)


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent (the server checked it)."""
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
