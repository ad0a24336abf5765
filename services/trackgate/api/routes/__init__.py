"""One router per resource; ``api_routers`` lists the versioned ones.

Each router carries the full ``/v1/...`` prefix itself, so that a route's
path is its whole template (the metrics label requests by it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from trackgate.api.schemas import ErrorBody

#: Error responses every authenticated route can give (documented in the
#: OpenAPI schema with the one error shape).
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or not a valid one."},
    403: {"model": ErrorBody, "description": "The token's scope is too small."},
    413: {"model": ErrorBody, "description": "The request body is too large."},
    422: {"model": ErrorBody, "description": "A parameter or the body is not valid."},
    503: {"model": ErrorBody, "description": "Redis did not answer."},
}


#: Version prefix of every resource route.
V1 = "/v1"


def api_routers() -> list[APIRouter]:
    """The versioned routers, in the order they appear in the docs."""
    from trackgate.api.routes import commands, devices, diagnostics, live

    return [devices.router, commands.router, live.router, diagnostics.router]
