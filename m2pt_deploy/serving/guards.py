"""What every request passes before a handler: the API key and the body-size limit."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from m2pt_deploy.serving.protocol import ProtocolError

__all__ = ["OPEN_PATHS", "ApiKeyGuard", "error_response", "read_body"]

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def error_response(message: str, status: int, headers: Mapping[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Any, limit: int, *, idle_timeout_s: float | None = None,
                    deadline: float | None = None, timeout_s: float | None = None) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes.

    An upload that sends nothing for ``idle_timeout_s`` gets 408 and its connection is closed,
    so a stalled client holds neither a connection nor a queue place for ever; one that is not
    complete by ``deadline`` (``time.monotonic()``; the request timeout ``timeout_s`` counted
    from arrival) gets 408 too.
    """
    # NOTE one wait_for per chunk with the nearer of the two limits, not a wait_for around this
    # whole coroutine: on Python < 3.12 an outer wait_for's cancel can be swallowed by the inner
    # one when a chunk arrives at the same moment, and the request then waits for the idle limit.
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        # decompressing would let a small body expand past the limit; send tensors uncompressed
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; send the body "
                            "uncompressed", status=415)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"body of {declared} bytes exceeds the limit of {limit}", status=413)
    # One growing buffer, not a list of chunks joined at the end: the join held every large body
    # twice at once (glibc grows a buffer this size in place, with mremap).
    body, size = bytearray(), 0
    stream = request.stream()
    while True:
        wait, by_deadline = idle_timeout_s, False
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if wait is None or remaining < wait:
                wait, by_deadline = max(remaining, 0.0), True
        try:
            chunk = await asyncio.wait_for(anext(stream), wait)
        except StopAsyncIteration:
            break
        except TimeoutError:
            if by_deadline:
                raise ProtocolError(f"request body not received within the request timeout of "
                                    f"{timeout_s:g} s", status=408) from None
            raise ProtocolError(f"request body stalled: nothing received for {idle_timeout_s:g} s "
                                f"after {size} bytes", status=408) from None
        size += len(chunk)
        # Past the limit, read on (discarding) up to the limit again: closing on unread data
        # makes the kernel send RST, and the client would lose the 413 with it.
        if size > 2 * limit:
            break
        if size <= limit:
            body += chunk
    if size > limit:
        raise ProtocolError(f"body exceeds the limit of {limit} bytes", status=413)
    # Every consumer (json, numpy, PIL) reads it through the buffer protocol; no copy to bytes.
    return cast(bytes, body)


class ApiKeyGuard:
    """ASGI middleware: every path but the health probes needs the key, compared in constant time.

    The key may come as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
    """

    def __init__(self, app: Any, key: str, *, refused: Callable[[], None] | None = None) -> None:
        """``refused`` hears of every request turned away (the metrics count it)."""
        self.app = app
        self.key = key.encode()
        self.refused = refused

    def _given(self, scope: Mapping[str, Any]) -> bytes:
        headers = dict(scope.get("headers", ()))
        if b"x-api-key" in headers:
            return headers[b"x-api-key"]
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" else b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not hmac.compare_digest(
            self._given(scope), self.key
        ):
            response = error_response("missing or wrong API key", 401, {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            if self.refused is not None:
                self.refused()
            return
        await self.app(scope, receive, send)
