"""Diagnostics of this pod's network: listen queue, kernel counters, findings.

The API container shares the ingest container's network namespace, so what
``trackgate.diagnostics`` reads here (the ingest listener's accept queue,
the namespace's TCP counters, conntrack) is the ingest service's view. The
report samples twice, ``seconds`` apart, in a worker thread; at most
:data:`CONCURRENT_REPORTS` run at once so a burst of calls cannot tie up
the thread pool.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query

from trackgate.api.deps import ReadScope, SettingsDep
from trackgate.api.errors import Unavailable, invalid_value
from trackgate.api.routes import COMMON_ERRORS, V1
from trackgate.diagnostics import DiagnosticsError, collect_report

router = APIRouter(prefix=V1, tags=["diagnostics"], responses=COMMON_ERRORS)

#: Reports sampled at the same time; each holds a thread for ``seconds``.
CONCURRENT_REPORTS = 2

_limiter: anyio.CapacityLimiter | None = None


def _reports_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(CONCURRENT_REPORTS)
    return _limiter


@router.get("/diagnostics", summary="Network diagnostics of this pod")
async def get_diagnostics(
    _: ReadScope,
    settings: SettingsDep,
    seconds: Annotated[
        float, Query(ge=0, le=60, description="How long to sample counters.")
    ] = 1.0,
) -> dict[str, Any]:
    """Listen queue of the ingest port, kernel counters and what they suggest.

    The shape is documented in docs/diagnostics.md.
    """
    if seconds > settings.api_diagnostics_max_s:
        # The bound is a setting, so it is checked here rather than by the
        # Query above; the error has the same shape as the Query's.
        raise invalid_value(
            ["query", "seconds"],
            f"seconds must be at most {settings.api_diagnostics_max_s:g}",
            "less_than_equal",
        )
    try:
        return await anyio.to_thread.run_sync(
            partial(collect_report, settings.port, seconds),
            limiter=_reports_limiter(),
        )
    except DiagnosticsError as exc:
        raise Unavailable(
            f"the kernel did not answer: {exc}", code="diagnostics_unavailable"
        ) from exc
