"""kopf wiring: which events call which :class:`Control` method. Nothing else.

- create / update of ``spec`` / resume of any profile: re-render every
  agent DaemonSet (one profile's change can move the others' affinity),
  then write an immediate status;
- a timer per profile: aggregate agent reports into the status, and post
  each new piece of advice as a Kubernetes Event (Warning);
- delete: wait until the profile's agents report ``Released`` (they restore
  originals when ``restoreOnDelete``), at most the restore timeout, then
  re-render the others, which may now take the freed nodes.

No handler touches Nodes (no finalizers there: an operator outage must not
block node deletion). The finalizer kopf puts on profiles for the delete
handler and the timer is ``trackgate.io/operator``. Handler state lives in
annotations with the ``trackgate.io`` prefix. kopf runs standalone: one
replica, no peering (docs/operator.md says why).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from trackgate.operator.control import Control
from trackgate.operator.errors import ClusterError
from trackgate.operator.manifests import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

# Seconds between checks while a deleted profile's agents restore values.
_RELEASE_POLL = 5


def build_registry(control: Control) -> kopf.OperatorRegistry:
    """A kopf registry whose handlers call ``control``."""
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)
    interval = control.settings.operator_status_interval
    restore_timeout = control.settings.operator_restore_timeout

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = f"{GROUP}/operator"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=GROUP
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", field="spec", registry=registry)
    def reconcile(body: kopf.Body, name: str, patch: kopf.Patch, **_: Any) -> None:
        problems = _cluster(control.reconcile_all)
        update = _cluster(lambda: control.status_of(body, problems.get(name)))
        patch.status.update(update.status)

    @kopf.timer(
        *resource,
        id="report",
        interval=interval,
        initial_delay=interval,
        registry=registry,
    )
    def report(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        update = _cluster(lambda: control.status_of(body))
        patch.status.update(update.status)
        for advice in update.new_advice:
            kopf.warn(body, reason=advice.reason, message=advice.message)

    @kopf.on.delete(*resource, id="release", registry=registry)
    def release(body: kopf.Body, name: str, **_: Any) -> None:
        waited = _seconds_since(body["metadata"].get("deletionTimestamp"))
        if not _cluster(lambda: control.release_done(name)):
            if waited < restore_timeout:
                raise kopf.TemporaryError(
                    f"agents of {name} are restoring original values",
                    delay=_RELEASE_POLL,
                )
            kopf.warn(
                body,
                reason="RestoreTimeout",
                message=f"not every agent confirmed its restore in "
                f"{restore_timeout} s; the node state files keep the originals",
            )
        _cluster(lambda: control.reconcile_all(gone=name))

    return registry


def _cluster(call: Any) -> Any:
    """Run an API-bound call; API failures become kopf's temporary errors."""
    try:
        return call()
    except ClusterError as exc:
        raise kopf.TemporaryError(str(exc), delay=30) from exc


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    since = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (datetime.now(UTC) - since).total_seconds()


def run(control: Control, liveness_port: int) -> None:
    """Run kopf standalone and cluster-wide until it is stopped."""
    kopf.run(
        registry=build_registry(control),
        standalone=True,
        clusterwide=True,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
    )
