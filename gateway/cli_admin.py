"""``gateway orgs …`` and ``gateway keys …``: the admin API from a terminal or a script.

The helpers here (``client_from``, ``show``, ``add_command``) are shared with
``gateway.cli_webhooks``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from gateway.admin import saved_admin_token
from gateway.config import ConfigError, load_config


class CliError(Exception):
    """Printed as ``error: …`` with exit status 1."""


class AdminClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the URL is the configured admin listener
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - as above
                return json.loads(response.read())["data"]
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                raise CliError(f"{error['code']}: {error['message']}") from None
            except (ValueError, KeyError):
                raise CliError(f"HTTP {exc.code} from the admin API") from None
        except urllib.error.URLError as exc:
            raise CliError(
                f"cannot reach the admin API at {self.base_url} ({exc.reason});"
                " is the gateway running?"
            ) from None


def client_from(args: argparse.Namespace) -> AdminClient:
    """The admin URL and token: flags, then environment, then the config file."""
    url = args.admin_url or os.environ.get("GATEWAY_ADMIN_URL")
    token = os.environ.get("GATEWAY_ADMIN_TOKEN")
    if not url or not token:
        path = args.config or os.environ.get("GATEWAY_CONFIG") or "gateway.yaml"
        try:
            config = load_config(path).config
        except ConfigError as exc:
            raise CliError(f"{path}: " + "; ".join(exc.problems)) from None
        host = config.admin.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        url = url or f"http://{host}:{config.admin.port}"
        token = token or saved_admin_token(config.admin)
    if not token:
        raise CliError("no admin token: set GATEWAY_ADMIN_TOKEN or admin.token in the config")
    return AdminClient(url, token)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if value is None or value == "":
            return "-"
        if isinstance(value, list):
            return ",".join(str(v) for v in value) or "-"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


ORG_COLUMNS = ("id", "slug", "name", "plan", "createdAt")
KEY_COLUMNS = (
    "id",
    "name",
    "prefix",
    "last4",
    "environment",
    "scopes",
    "expiresAt",
    "lastUsedAt",
    "revokedAt",
)


def show(args: argparse.Namespace, result: Any, columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = result if isinstance(result, list) else [result]
    print(table(rows, columns))
    if isinstance(result, dict) and result.get("secret"):
        print(f"\nsecret (shown once, store it now): {result['secret']}")


def orgs_create(args: argparse.Namespace) -> None:
    body = {"slug": args.slug, "name": args.name or args.slug, "plan": args.plan}
    show(args, client_from(args).call("POST", "/admin/orgs", body), ORG_COLUMNS)


def orgs_list(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("GET", "/admin/orgs"), ORG_COLUMNS)


def keys_create(args: argparse.Namespace) -> None:
    body = {
        "name": args.name,
        "scopes": args.scope,
        "environment": args.environment,
        "expiresAt": args.expires,
        "allowedIps": args.allow_ip,
    }
    show(args, client_from(args).call("POST", f"/admin/orgs/{args.org}/keys", body), KEY_COLUMNS)


def keys_list(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("GET", f"/admin/orgs/{args.org}/keys"), KEY_COLUMNS)


def keys_show(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("GET", f"/admin/keys/{args.key}"), KEY_COLUMNS)


def keys_revoke(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("POST", f"/admin/keys/{args.key}/revoke", {}), KEY_COLUMNS)


def keys_rotate(args: argparse.Namespace) -> None:
    result = client_from(args).call("POST", f"/admin/keys/{args.key}/rotate", {"grace": args.grace})
    show(args, result, KEY_COLUMNS)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help="config file that locates the admin API")
    common.add_argument("--admin-url", help="admin API base URL (default: from the config)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


_COMMON = _common_options()


def add_command(
    group: Any, name: str, func: Callable[[argparse.Namespace], None], help: str
) -> argparse.ArgumentParser:
    """A subcommand with --config, --admin-url and --json that prints CliError as ``error: …``."""
    parser: argparse.ArgumentParser = group.add_parser(name, parents=[_COMMON], help=help)
    parser.set_defaults(func=_run(func))
    return parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    orgs = sub.add_parser("orgs", help="manage orgs").add_subparsers(dest="action", required=True)
    p = add_command(orgs, "create", orgs_create, "create an org")
    p.add_argument("slug")
    p.add_argument("--name", help="display name (default: the slug)")
    p.add_argument("--plan", required=True, help="a plan from gateway.yaml")
    add_command(orgs, "list", orgs_list, "list orgs")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    p = add_command(keys, "create", keys_create, "create a key (its secret is shown once)")
    p.add_argument("org", help="org id or slug")
    p.add_argument("--name", required=True)
    p.add_argument("--scope", action="append", default=[], help="a scope; repeat for more")
    p.add_argument("--environment", "--env", choices=["live", "test"], default="live")
    p.add_argument("--expires", help="expiry, ISO 8601 with a zone: 2027-01-01T00:00:00Z")
    p.add_argument("--allow-ip", action="append", default=[], help="allowed CIDR; repeat for more")
    p = add_command(keys, "list", keys_list, "list an org's keys")
    p.add_argument("org", help="org id or slug")
    for name, func, what in (
        ("show", keys_show, "show a key"),
        ("revoke", keys_revoke, "revoke a key now"),
    ):
        add_command(keys, name, func, what).add_argument("key", help="key id (key_…)")
    p = add_command(keys, "rotate", keys_rotate, "replace a key; the old one works for --grace")
    p.add_argument("key", help="key id (key_…)")
    p.add_argument("--grace", default="0s", help="how long the old key keeps working (e.g. 24h)")


def _run(func: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            func(args)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run
