"""The gateway's own events: key.created, key.revoked, key.rotated and key.expiring."""

from __future__ import annotations

import structlog

from gateway.api.views import key_view
from gateway.store import ApiKey, Store, StoreError
from gateway.webhooks.service import WebhookService, stable_event_id

log = structlog.get_logger("gateway.webhooks")

SCAN_EVERY = 300.0  # seconds between scans for keys about to expire
# Keys read at a time: a scan holds one page, however many keys an org has made and revoked.
SCAN_PAGE = 500


class KeyEvents:
    def __init__(self, store: Store, service: WebhookService) -> None:
        self.store = store
        self.service = service
        self._last_scan = float("-inf")

    async def publish(self, kind: str, key: ApiKey) -> None:
        """Queue key.<kind> for the key's org. The key change itself has happened already, so
        a store failure here is logged, not raised over the change's success."""
        try:
            await self.service.publish(key.org_id, f"key.{kind}", key_view(key), source="gateway")
            if kind == "created":
                await self._announce_if_expiring(key, self.service.clock())
        except StoreError as exc:
            log.error("webhook_event_lost", type=f"key.{kind}", key=key.id, error=str(exc))

    async def scan_if_due(self) -> None:
        now = self.service.clock()
        if now - self._last_scan >= SCAN_EVERY:
            self._last_scan = now
            await self.scan_expiring()

    async def scan_expiring(self) -> None:
        """key.expiring for every usable key that expires within key_expiring_notice.

        Its event id comes from the key and its expiry, so every instance scanning, and
        every scan, queues it once; a key given a new expiry is announced again.
        """
        now = self.service.clock()
        for org in await self.store.list_orgs():
            offset = 0
            while page := await self.store.list_keys(org.id, offset=offset, limit=SCAN_PAGE):
                for key in page:
                    await self._announce_if_expiring(key, now)
                offset += len(page)

    async def _announce_if_expiring(self, key: ApiKey, now: float) -> None:
        expires = key.expires_at
        if expires is None or key.rotated_to is not None or not key.usable_at(now):
            return  # a rotated key's end was announced with key.rotated
        if expires - self.service.config.webhooks.key_expiring_notice <= now:
            await self.service.publish(
                key.org_id,
                "key.expiring",
                key_view(key),
                source="gateway",
                event_id=stable_event_id("key.expiring", key.id, repr(expires)),
            )
