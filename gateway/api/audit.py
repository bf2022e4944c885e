"""The audit trail: every admin action, who did it (the admin token's name), and the record
before and after, kept in the store before the action is answered."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway.observability.metrics import Metrics
from gateway.store.activity_base import ActivityStore
from gateway.store.activity_models import AuditEntry
from gateway.store.base import StoreError
from gateway.store.models import new_id

log = structlog.get_logger("gateway.audit")

View = dict[str, Any]


class AuditTrail:
    def __init__(
        self,
        activity: ActivityStore,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._activity = activity
        self._metrics = metrics
        self._clock = clock

    async def record(
        self,
        actor: str,
        action: str,
        *,
        target: str | None,
        org_id: str | None,
        before: View | None = None,
        after: View | None = None,
    ) -> None:
        """Keep one entry. ``actor``: the admin token's name, ``key:<id>`` for a key that
        manages its org's webhooks on the data plane, or what acted on its own (``sighup``,
        ``file-watch``).

        SECURITY: views only, never a secret: callers pass what the API itself shows.

        The action is done when this is called, so a store that fails here must not turn it
        into an error the caller would retry: the entry goes to the log in full instead, and
        is counted.
        """
        entry = AuditEntry(
            id=new_id("aud"),
            time=self._clock(),
            actor=actor,
            action=action,
            target=target,
            org_id=org_id,
            before=_without_secret(before),
            after=_without_secret(after),
        )
        try:
            await self._activity.append_audit(entry)
        except StoreError as exc:
            if self._metrics is not None:
                self._metrics.audit_unrecorded.inc()
            log.error(
                "audit_unrecorded",
                error=str(exc),
                id=entry.id,
                actor=actor,
                action=action,
                target=target,
                org_id=org_id,
                before=entry.before,
                after=entry.after,
            )


def _without_secret(view: View | None) -> View | None:
    """A view as the audit log keeps it: the one-time secrets of key and endpoint answers left
    out, whatever the caller passed."""
    if view is None:
        return None
    return {name: value for name, value in view.items() if name != "secret"}
