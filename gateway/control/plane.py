"""The admin API's parts, built alike by a gateway process and by the supervisor of workers."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from gateway.api.audit import AuditTrail
from gateway.config import GatewayConfig
from gateway.control.activity_api import ActivityApi
from gateway.control.keys_api import KeysApi
from gateway.control.openapi import OpenApiDocument
from gateway.control.orgs_api import OrgsApi
from gateway.control.webhooks_api import WebhookAdmin
from gateway.keys.secrets import KeyFormat
from gateway.observability.metrics import Metrics
from gateway.store import Store
from gateway.webhooks.key_events import KeyEvents
from gateway.webhooks.service import WebhookService


class ControlPlane:
    """Orgs, keys, webhook endpoints and events over the admin API."""

    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        key_format: KeyFormat,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.webhooks = WebhookService(store, config, metrics=metrics, clock=clock)
        self.key_events = KeyEvents(store, self.webhooks)
        self.audit = AuditTrail(store.activity, metrics=metrics, clock=clock)
        self.orgs_api = OrgsApi(store, config, self.audit, clock=clock)
        self.keys_api = KeysApi(
            store,
            config,
            key_format,
            self.audit,
            clock=clock,
            on_key_event=self.key_events.publish,
        )
        self._webhook_admin = WebhookAdmin(self.webhooks, store, self.audit)
        self.activity_api = ActivityApi(store, config, clock=clock)
        self.openapi = OpenApiDocument(config)

    def install(self, app: web.Application) -> None:
        self.orgs_api.add_routes(app)
        self.keys_api.add_routes(app)
        self._webhook_admin.add_routes(app)
        self.activity_api.add_routes(app)
        self.openapi.add_routes(app)

    def set_config(self, config: GatewayConfig) -> None:
        """After a reload: plans, routes and caps as the new config says."""
        self.orgs_api.config = config
        self.activity_api.config = config
        self.keys_api.config = config
        self.webhooks.config = config
        self.openapi.set_config(config)
