"""First start for newcomers: a demo org and key, printed with a ready-to-paste curl."""

from __future__ import annotations

import sys
from typing import TextIO

import structlog

from gateway.admin_api import AdminApi
from gateway.config import GatewayConfig
from gateway.store import Conflict, Org, Store, new_id

log = structlog.get_logger("gateway")


async def ensure_demo(
    store: Store, api: AdminApi, config: GatewayConfig, url: str, out: TextIO = sys.stderr
) -> None:
    """Create the demo org and one key if the org does not exist yet; print the key once.

    The secret goes to the terminal only (never to the JSON log): it cannot be shown again.
    """
    demo = config.demo
    if demo is None:
        return
    existing = await store.get_org(demo.org)
    me = f"{url}{config.identity.path}"
    if existing is not None and await store.list_keys(existing.id):
        print(
            f"\nDemo org {demo.org!r} exists; its key was printed on the first start.\n"
            f"Make another: .venv/bin/gateway keys create {demo.org} --name demo\n",
            file=out,
            flush=True,
        )
        return
    plan = demo.plan or next(iter(config.plans))
    org = existing or Org(new_id("org"), demo.org, "Demo Org", plan, api.clock())
    if existing is None:
        try:
            await store.create_org(org)
        except Conflict:  # another instance won the race: it printed the key
            return
    key, secret = api.new_key(
        org, name="demo", scopes=demo.scopes, environment="live", expires_at=None, allowed_ips=()
    )
    await store.create_key(key)
    log.info("demo_created", org_id=org.id, key_id=key.id)
    print(
        f"\nCreated demo org {demo.org!r} and an API key (shown once, keep it):\n\n"
        f"  {secret}\n\n"
        f"Try it:\n\n"
        f'  curl -H "Authorization: Bearer {secret}" {me}\n'
        f'  curl -H "Authorization: Bearer {secret}" {url}/v1/echo/hello\n',
        file=out,
        flush=True,
    )
