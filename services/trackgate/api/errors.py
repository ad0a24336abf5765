"""Errors the API returns, and the handlers that give them one JSON shape.

Every error body is ``{"error": {"code", "message", "details"}}``; ``code``
is stable and documented in docs/api.md, ``message`` is for people. The
family is split by blame: :class:`ClientError` (4xx, the request is wrong)
and :class:`ServiceError` (5xx, we or Redis are). Errors from the core
store and from Redis are translated here, once; a stack trace never
reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from trackgate.api import metrics
from trackgate.core.commands import (
    CommandQueueFull,
    CommandRateLimited,
    CommandStateConflict,
    IdempotencyConflict,
    UnknownCommand,
)
from trackgate.core.paging import CursorError

log = logging.getLogger("trackgate.api")


class ApiError(Exception):
    """An error with its HTTP status, stable code and optional details."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        if code is not None:
            self.code = code


class ClientError(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class Invalid(ClientError):
    """422: ``details`` is always a list of ``{loc, msg, type}`` problems."""

    status = 422
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(
            message, details=details if details is not None else [],
            headers=headers, code=code,
        )  # fmt: skip


def invalid_value(
    loc: list[str | int], msg: str, kind: str, *, code: str | None = None
) -> Invalid:
    """A 422 about one value, in the shape request validation gives its list."""
    problem: dict[str, Any] = {"loc": loc, "msg": msg, "type": kind}
    return Invalid(msg, details=[problem], code=code)


class ContentTooLarge(ClientError):
    status = 413
    code = "body_too_large"


class TooManyRequests(ClientError):
    status = 429
    code = "rate_limited"


class ServiceError(ApiError):
    status = 500
    code = "internal_error"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class BodyTooLarge(StarletteHTTPException):
    """Raised inside a body read once the bytes received pass the limit.

    An HTTP exception, so that the route's body reading lets it through
    unchanged; its own handler gives it the one error shape.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413)
        self.limit = limit


def body_too_large(limit: int) -> ContentTooLarge:
    """The error of a request body longer than ``limit`` bytes."""
    return ContentTooLarge(
        f"the request body is larger than {limit} bytes",
        details={"max_bytes": limit},
    )


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(error: ApiError) -> JSONResponse:
    """The JSON response of ``error``, counted in the error metric."""
    metrics.ERRORS.labels(code=error.code).inc()
    return JSONResponse(
        error_body(error.code, error.message, error.details),
        status_code=error.status,
        headers=error.headers,
    )


def translate(exc: Exception) -> ApiError | None:
    """The API error for an exception of the core or of Redis, if known."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownCommand):
        return NotFound(str(exc), code="command_not_found")
    if isinstance(exc, CommandStateConflict):
        return Conflict(str(exc), code="invalid_state", details={"state": exc.state})
    if isinstance(exc, IdempotencyConflict):
        return Conflict(
            str(exc), code="idempotency_conflict", details={"id": exc.existing.id}
        )
    if isinstance(exc, CommandQueueFull):
        return Conflict(str(exc), code="queue_full")
    if isinstance(exc, CommandRateLimited):
        seconds = max(1, -(-exc.retry_after_ms // 1000))
        metrics.RATE_LIMITED.inc()
        return TooManyRequests(
            str(exc),
            details={"retry_after_ms": exc.retry_after_ms},
            headers={"Retry-After": str(seconds)},
        )
    if isinstance(exc, CursorError):
        return invalid_value(
            ["query", "cursor"], str(exc), "invalid_cursor", code="invalid_cursor"
        )
    if isinstance(exc, RedisError):
        log.warning("redis unavailable: %s: %s", type(exc).__name__, exc)
        return Unavailable("Redis did not answer; try again", code="redis_unavailable")
    return None


async def _handle_known(request: Request, exc: Exception) -> JSONResponse:
    error = translate(exc)
    if error is None:
        return await _handle_unexpected(request, exc)
    return error_response(error)


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only location, message and type: the raw input may be large or secret.
    details = [
        {"loc": list(item.get("loc", ())), "msg": item.get("msg", ""),
         "type": item.get("type", "")}
        for item in exc.errors()
    ]  # fmt: skip
    return error_response(Invalid("request is not valid", details=details))


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
}


async def _handle_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error = ApiError(
        str(exc.detail), code=_HTTP_CODES.get(exc.status_code, "http_error"),
        headers=dict(exc.headers or {}),
    )  # fmt: skip
    error.status = exc.status_code
    return error_response(error)


async def _handle_body_too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLarge)
    return error_response(body_too_large(exc.limit))


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc
    )
    return error_response(ServiceError("internal error"))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the one JSON shape."""
    for family in (
        ApiError, UnknownCommand, CommandStateConflict, IdempotencyConflict,
        CommandQueueFull, CommandRateLimited, CursorError, RedisError,
    ):  # fmt: skip
        app.add_exception_handler(family, _handle_known)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(BodyTooLarge, _handle_body_too_large)
    app.add_exception_handler(Exception, _handle_unexpected)
