"""Liveness, readiness and metrics: the endpoints that need no token.

``/healthz`` says the process serves requests; ``/readyz`` also needs Redis
to answer a PING within a second (the API is useless without it);
``/metrics`` is Prometheus text, public unless
``TRACKGATE_API_METRICS_PUBLIC=false``.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.exceptions import RedisError

from trackgate.api.auth import Scope
from trackgate.api.deps import (
    RedisDep,
    SettingsDep,
    TokensDep,
    bearer_scheme,
    check_scope,
)
from trackgate.api.errors import Unavailable
from trackgate.api.schemas import ErrorBody, HealthPublic

router = APIRouter(tags=["health"])

#: A PING slower than this means Redis is not usable for serving requests.
READY_TIMEOUT_S = 1.0


@router.get("/healthz", response_model=HealthPublic, summary="Liveness")
async def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get(
    "/readyz",
    response_model=HealthPublic,
    summary="Readiness",
    responses={503: {"model": ErrorBody, "description": "Redis unreachable."}},
)
async def readyz(redis: RedisDep) -> HealthPublic:
    try:
        await asyncio.wait_for(redis.ping(), READY_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        raise Unavailable(
            f"Redis is not reachable: {type(exc).__name__}", code="redis_unavailable"
        ) from exc
    return HealthPublic(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(
    request: Request, settings: SettingsDep, tokens: TokensDep
) -> Response:
    if not settings.api_metrics_public:
        credentials: HTTPAuthorizationCredentials | None = await bearer_scheme(request)
        check_scope(tokens, credentials, Scope.READ)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
