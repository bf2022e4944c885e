"""First start for newcomers: a demo org and key, printed with a ready-to-paste curl."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import TextIO

import structlog

from gateway.config import GatewayConfig
from gateway.control.keys_api import KeysApi
from gateway.dataplane.router import Router
from gateway.errors import GatewayError
from gateway.http.paths import _PARAM as TEMPLATE_PARAM  # the one definition of a {param}
from gateway.http.paths import check_path, compile_template
from gateway.keys.scopes import ScopePolicy
from gateway.store import Conflict, Org, Store, prefixed_id

log = structlog.get_logger("gateway")

# What a path parameter is filled with in the printed example, tried in order against its regex.
_SAMPLES = ("hello", "1", "example")
DEFAULT_CONFIG = "gateway.yaml"
DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"


def example_path(config: GatewayConfig, scopes: Sequence[str]) -> str | None:
    """A path a key with these scopes can GET on this config, or None when no route fits.

    The first route in file order that needs a key, takes GET from any host, is not deprecated
    and whose scopes the key covers, with its parameters filled in; and the router must send
    that path to that very route (an earlier one could take it).
    """
    policy = ScopePolicy(config.scopes.implies)
    granted = policy.expand(scopes)
    router = Router([(r.path, r.methods, r.host, i) for i, r in enumerate(config.routes)])
    for index, route in enumerate(config.routes):
        deprecated = getattr(route, "deprecation", None) is not None  # the plugin's field
        if "key" not in route.credentials or route.host is not None or deprecated:
            continue
        if route.methods is not None and "GET" not in route.methods:
            continue
        if policy.missing(granted, route.scopes):
            continue
        for path in _filled(route.path):
            if path == config.identity.path:
                continue
            try:
                check_path(path)
                if router.match("GET", "localhost", path).target == index:
                    return path
            except GatewayError:
                continue
    return None


def _filled(template: str) -> list[str]:
    """The template with every parameter set to one sample value that its regex accepts."""
    regex, _ = compile_template(template)
    if regex is None:
        return [template]
    paths = [TEMPLATE_PARAM.sub(sample, template) for sample in _SAMPLES]
    return [p for p in paths if regex.match(p)]


def _cli_command(demo_org: str, scopes: Sequence[str], config_path: str, admin_url: str) -> str:
    """The CLI line that makes one more key like the demo one, as the user would type it."""
    argv = [".venv/bin/gateway", "keys", "create", demo_org, "--name", "demo"]
    for scope in scopes:
        argv += ["--scope", scope]
    if config_path != DEFAULT_CONFIG:
        argv += ["-c", config_path]
    if admin_url != DEFAULT_ADMIN_URL:
        argv += ["--admin-url", admin_url]
    return shlex.join(argv)


def _admin_url(address: tuple[str, int] | None) -> str:
    """The admin listener as the CLI reaches it (a wildcard bind is reached on loopback)."""
    if address is None:
        return DEFAULT_ADMIN_URL
    host, port = address[:2]
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def ensure_demo(
    store: Store,
    api: KeysApi,
    config: GatewayConfig,
    url: str,
    out: TextIO | None = None,
    *,
    config_path: str = DEFAULT_CONFIG,
    admin_address: tuple[str, int] | None = None,
) -> None:
    """Create the demo org and one key if the org does not exist yet; print the key once.

    The secret goes to the terminal only (never to the JSON log): it cannot be shown again.
    Every printed command works on this config: the example path is one of its routes that the
    demo key's scopes allow, and the CLI line names the config and admin URL when they are not
    the defaults.
    """
    out = out or sys.stderr
    demo = config.demo
    if demo is None:
        return
    existing = await store.get_org(demo.org)
    example = example_path(config, demo.scopes)
    if existing is not None and await store.list_keys(existing.id):
        command = _cli_command(demo.org, demo.scopes, config_path, _admin_url(admin_address))
        lines = [
            f"\nDemo org {demo.org!r} exists; its key was printed on the first start.",
            f"Make another (its secret is printed once):\n\n  {command}\n",
        ]
        if example is not None:
            lines.append(
                f'and try it:\n\n  curl -H "Authorization: Bearer <the new key>" {url}{example}\n'
            )
        print("\n".join(lines), file=out, flush=True)
        return
    plan = demo.plan or next(iter(config.plans))
    org = existing or Org(prefixed_id(config.ids.org), demo.org, "Demo Org", plan, api.clock())
    if existing is None:
        try:
            await store.create_org(org)
        except Conflict:  # another instance won the race: it printed the key
            return
    key, secret = api.service.new_key(
        org, name="demo", scopes=demo.scopes, environment="live", expires_at=None, allowed_ips=()
    )
    await store.create_key(key)
    log.info("demo_created", org_id=org.id, key_id=key.id)
    tries = [
        f"{url}{path}"
        for path in (config.identity.path if config.identity.enabled else None, example)
        if path is not None
    ]
    text = f"\nCreated demo org {demo.org!r} and an API key (shown once, keep it):\n\n  {secret}\n"
    if tries:
        text += "\nTry it:\n\n" + "".join(
            f'  curl -H "Authorization: Bearer {secret}" {target}\n' for target in tries
        )
    text += (
        f"\nThe console (orgs, keys, the request log, usage, audit): {_admin_url(admin_address)}/"
        "\nLog in with the admin token (admin.token, or the file admin.token_file names).\n"
    )
    print(text, file=out, flush=True)
