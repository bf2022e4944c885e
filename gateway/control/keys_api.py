"""The admin API's key endpoints: create, list, show, change, revoke and rotate API keys."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.api.audit import AuditTrail
from gateway.api.bodies import B, parse_body
from gateway.api.keys_service import (
    Clock,
    CreateKey,
    KeyEventHook,
    KeyService,
    RotateKey,
    UpdateKey,
)
from gateway.api.views import find_org, key_view
from gateway.config import GatewayConfig
from gateway.control.listener import actor_of, json_response
from gateway.keys.secrets import KeyFormat
from gateway.store import ApiKey, Store


class KeysApi:
    """The key endpoints over the key service (which mints the demo key too)."""

    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        key_format: KeyFormat,
        audit: AuditTrail | None = None,
        *,
        clock: Clock = time.time,
        on_key_event: KeyEventHook | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.service = KeyService(
            store, config, key_format, audit, clock=clock, on_key_event=on_key_event
        )

    @property
    def config(self) -> GatewayConfig:
        return self.service.config

    @config.setter
    def config(self, config: GatewayConfig) -> None:
        self.service.config = config  # after a reload: plans and routes

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/admin/orgs/{org}/keys", self.create_key)
        r.add_get("/admin/orgs/{org}/keys", self.list_keys)
        r.add_get("/admin/keys/{id}", self.get_key)
        r.add_patch("/admin/keys/{id}", self.update_key)
        r.add_post("/admin/keys/{id}/revoke", self.revoke_key)
        r.add_post("/admin/keys/{id}/rotate", self.rotate_key)

    async def _body(self, request: web.Request, model: type[B]) -> B:
        context: dict[str, Any] = {"now": self.clock()}  # expiresAt must lie ahead
        return parse_body(await request.read(), model, context)

    async def _key(self, request: web.Request) -> ApiKey:
        return await self.service.key(request.match_info["id"])

    async def create_key(self, request: web.Request) -> web.Response:
        org = await find_org(self.store, request.match_info["org"])
        body = await self._body(request, CreateKey)
        key, secret = await self.service.create(actor_of(request), org, body)
        return json_response(key_view(key, secret), 201)

    async def list_keys(self, request: web.Request) -> web.Response:
        org = await find_org(self.store, request.match_info["org"])
        return json_response([key_view(k) for k in await self.store.list_keys(org.id)])

    async def get_key(self, request: web.Request) -> web.Response:
        return json_response(key_view(await self._key(request)))

    async def update_key(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        body = await self._body(request, UpdateKey)
        return json_response(key_view(await self.service.update(actor_of(request), key, body)))

    async def revoke_key(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        return json_response(key_view(await self.service.revoke(actor_of(request), key)))

    async def rotate_key(self, request: web.Request) -> web.Response:
        old = await self._key(request)
        body = await self._body(request, RotateKey)
        new, secret = await self.service.rotate(actor_of(request), old, body.grace)
        return json_response(key_view(new, secret), 201)
