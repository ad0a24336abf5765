"""Diagnostics of this pod's network: listen queue, kernel counters, findings.

The API container shares the ingest container's network namespace, so what
``trackgate.diagnostics`` reads here (the listener's accept queue, the
namespace's TCP counters) is the ingest service's view. When that package
offers no report function, the endpoint says so (501) rather than invent
numbers.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query

from trackgate.api.deps import ReadScope, SettingsDep
from trackgate.api.errors import Invalid, NotImplementedYet
from trackgate.api.routes import COMMON_ERRORS, V1
from trackgate.api.schemas import ErrorBody

router = APIRouter(prefix=V1, tags=["diagnostics"], responses=COMMON_ERRORS)


@router.get(
    "/diagnostics",
    summary="Network diagnostics of this pod",
    responses={501: {"model": ErrorBody, "description": "Diagnostics not built in."}},
)
async def get_diagnostics(
    _: ReadScope,
    settings: SettingsDep,
    seconds: Annotated[
        float, Query(ge=0, le=60, description="How long to sample counters.")
    ] = 1.0,
) -> dict[str, Any]:
    """Listen queue of the ingest port, kernel counters and what they suggest."""
    if seconds > settings.api_diagnostics_max_s:
        raise Invalid(
            f"seconds must be at most {settings.api_diagnostics_max_s}",
            code="invalid_request",
        )
    from trackgate import diagnostics

    collect = getattr(diagnostics, "collect_report", None)
    if collect is None:
        raise NotImplementedYet(
            "this build has no diagnostics report", code="diagnostics_unavailable"
        )
    if inspect.iscoroutinefunction(collect):
        report = await collect(settings.port, seconds)
    else:
        report = await anyio.to_thread.run_sync(collect, settings.port, seconds)
    return dict(report)
