"""``gateway orgs …`` and ``gateway keys …``: the admin API from a terminal or a script.

The helpers here (``client_from``, ``show``, ``add_command``) are shared with
``gateway.cli.webhooks``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from gateway.cli.client import (
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    AdminClient,
    CliError,
    parse_timeout,
)
from gateway.config import ConfigError, load_config
from gateway.config.types import parse_duration
from gateway.control.listener import saved_admin_token

__all__ = ["CliError", "add_command", "add_commands", "client_from", "segment", "show"]


def client_from(args: argparse.Namespace) -> AdminClient:
    """The admin URL and token: flags, then environment, then the config file."""
    if args.timeout is not None:
        timeout = parse_timeout(args.timeout, "--timeout")
    elif os.environ.get(TIMEOUT_ENV):
        timeout = parse_timeout(os.environ[TIMEOUT_ENV], TIMEOUT_ENV)
    else:
        timeout = DEFAULT_TIMEOUT
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
    return AdminClient(url, token, timeout)


def _seconds(seconds: float) -> str:
    """60.0 as 1m, 86400.0 as 1d, 1.5 as 1.5s: durations as gateway.yaml writes them."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _rate_limit(value: dict[str, Any]) -> str:
    """{"requests": 300, "per": 60.0, "burst": 50} as 300/1m+50, the --rate-limit form (and
    "300/1m sliding window" for a window)."""
    try:
        text = f"{value['requests']}/{_seconds(float(value['per']))}"
    except (KeyError, TypeError, ValueError):
        return json.dumps(value, separators=(",", ":"))
    if value.get("algorithm") == "sliding_window":
        return f"{text} sliding window"
    return f"{text}+{value['burst']}" if value.get("burst") else text


def _attributes(value: dict[str, Any]) -> str:
    """{"role": "sales-manager", "team": "north"} as role=sales-manager,team=north."""
    return ",".join(f"{name}={text}" for name, text in value.items())


_OBJECTS: dict[str, Callable[[dict[str, Any]], str]] = {"attributes": _attributes}


def cell(value: Any, column: str = "") -> str:
    """A value as people read it: yes/no, '-' for nothing, lists joined by commas."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return _OBJECTS.get(column, _rate_limit)(value)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def details(record: dict[str, Any], fields: Sequence[str]) -> str:
    """One record, a field per line: for records too wide for a table row."""
    width = max(len(f) for f in fields)
    return "\n".join(f"{f.ljust(width)}  {cell(record.get(f), f)}".rstrip() for f in fields)


ORG_COLUMNS = ("id", "slug", "name", "plan", "createdAt", "attributes")
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
    "attributes",
)
KEY_FIELDS = (
    "id",
    "name",
    "orgId",
    "prefix",
    "last4",
    "environment",
    "scopes",
    "allowedIps",
    "rateLimit",
    "attributes",
    "createdAt",
    "expiresAt",
    "lastUsedAt",
    "revokedAt",
    "rotatedTo",
)


def show(args: argparse.Namespace, result: Any, columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = result if isinstance(result, list) else [result]
    print(table(rows, columns))
    _print_secret(result)


def show_details(args: argparse.Namespace, result: dict[str, Any], fields: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(details(result, fields))
    _print_secret(result)


def _print_secret(result: Any) -> None:
    if isinstance(result, dict) and result.get("secret"):
        print(f"\nsecret (shown once, store it now): {result['secret']}")


def segment(value: str) -> str:
    """One path segment: an id or slug as typed, never a way to another admin path."""
    return quote(value, safe="")


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+?)\s*(?:\+\s*(\d+)\s*)?$")


def rate_limit_body(value: str, *, sliding_window: bool = False) -> dict[str, Any]:
    """``300/1m`` or ``300/1m+50`` (50 more at once) as the admin API's rateLimit object; with
    ``sliding_window``, at most 300 in any minute (no burst)."""
    m = _RATE.match(value)
    if m is None:
        raise CliError(
            f"--rate-limit: write REQUESTS/PERIOD[+BURST], e.g. 300/1m or 300/1m+50 (got {value!r})"
        )
    body: dict[str, Any] = {"requests": int(m.group(1)), "per": m.group(2)}
    if m.group(3) is not None:
        body["burst"] = int(m.group(3))
    if sliding_window:
        if m.group(3) is not None:
            raise CliError("--sliding-window: a window has no burst; write REQUESTS/PERIOD")
        body["algorithm"] = "sliding_window"
    return body


def _rate_limit_of(args: argparse.Namespace) -> dict[str, Any] | None:
    """The --rate-limit (and --sliding-window) options as the admin API's rateLimit object."""
    if args.rate_limit is None:
        if args.sliding_window:
            raise CliError("--sliding-window: give the limit with --rate-limit N/PERIOD")
        return None
    return rate_limit_body(args.rate_limit, sliding_window=args.sliding_window)


def attributes_body(values: Sequence[str]) -> dict[str, str]:
    """``--attr role=sales-manager`` options as the admin API's attributes object."""
    attributes: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise CliError(f"--attr: write NAME=VALUE, e.g. role=sales-manager (got {value!r})")
        if name in attributes:
            raise CliError(f"--attr: {name} is given twice")
        attributes[name] = text
    return attributes


def _attributes_change(args: argparse.Namespace, body: dict[str, Any]) -> None:
    """--attr (the new set, replacing the old) or --clear-attrs into an update's body."""
    if args.attr:
        body["attributes"] = attributes_body(args.attr)
    elif args.clear_attrs:
        body["attributes"] = {}


def orgs_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"slug": args.slug, "name": args.name or args.slug, "plan": args.plan}
    if args.attr:
        body["attributes"] = attributes_body(args.attr)
    show(args, client_from(args).call("POST", "/admin/orgs", body), ORG_COLUMNS)


def orgs_list(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("GET", "/admin/orgs"), ORG_COLUMNS)


def orgs_show(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("GET", f"/admin/orgs/{segment(args.org)}"), ORG_COLUMNS)


def orgs_update(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        k: v for k, v in (("name", args.name), ("plan", args.plan)) if v is not None
    }
    _attributes_change(args, body)
    if not body:
        raise CliError("nothing to change: give --name, --plan, --attr or --clear-attrs")
    show(
        args, client_from(args).call("PATCH", f"/admin/orgs/{segment(args.org)}", body), ORG_COLUMNS
    )


def keys_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "scopes": args.scope,
        "environment": args.environment,
        "expiresAt": args.expires,
        "allowedIps": args.allow_ip,
    }
    rate_limit = _rate_limit_of(args)
    if rate_limit is not None:
        body["rateLimit"] = rate_limit
    if args.attr:
        body["attributes"] = attributes_body(args.attr)
    result = client_from(args).call("POST", f"/admin/orgs/{segment(args.org)}/keys", body)
    show(args, result, KEY_COLUMNS)


def keys_list(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("GET", f"/admin/orgs/{segment(args.org)}/keys"), KEY_COLUMNS)


def keys_show(args: argparse.Namespace) -> None:
    show_details(
        args, client_from(args).call("GET", f"/admin/keys/{segment(args.key)}"), KEY_FIELDS
    )


_FIXED_AT_CREATION = (
    "scopes, allowed IPs and expiry are fixed when a key is made:"
    " create a key with the new ones, then revoke this one"
)


def keys_update(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    rate_limit = _rate_limit_of(args)
    if rate_limit is not None:
        body["rateLimit"] = rate_limit
    if args.plan_rate_limit:
        body["rateLimit"] = None  # the admin API's way to drop the override
    _attributes_change(args, body)
    if not body:
        raise CliError(
            f"nothing to change: give --name, --rate-limit, --plan-rate-limit, --attr or"
            f" --clear-attrs ({_FIXED_AT_CREATION})"
        )
    result = client_from(args).call("PATCH", f"/admin/keys/{segment(args.key)}", body)
    show_details(args, result, KEY_FIELDS)


def keys_revoke(args: argparse.Namespace) -> None:
    result = client_from(args).call("POST", f"/admin/keys/{segment(args.key)}/revoke", {})
    show(args, result, KEY_COLUMNS)


def keys_rotate(args: argparse.Namespace) -> None:
    result = client_from(args).call(
        "POST", f"/admin/keys/{segment(args.key)}/rotate", {"grace": args.grace}
    )
    show(args, result, KEY_COLUMNS)
    if not args.json:
        print(_rotation_note(args.key, args.grace))


def _rotation_note(old: str, grace: str) -> str:
    try:
        seconds = parse_duration(grace)
    except ValueError:  # the admin API accepted it, so it is fine; say it as given
        seconds = None
    if seconds == 0:
        return (
            f"The old key {old} stops working now (grace 0s;"
            " pass --grace 24h to let both keys work for a day)."
        )
    return f"The old key {old} keeps working for {grace}, then stops."


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help="config file that locates the admin API")
    common.add_argument("--admin-url", help="admin API base URL (default: from the config)")
    common.add_argument(
        "--timeout",
        metavar="SECONDS",
        help=f"give up on a silent admin API after this long"
        f" (default: ${TIMEOUT_ENV} or {DEFAULT_TIMEOUT:g})",
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


_COMMON = _common_options()


def add_command(
    group: Any,
    name: str,
    func: Callable[[argparse.Namespace], None],
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand with --config, --admin-url, --timeout and --json; CliError is ``error: …``."""
    parser: argparse.ArgumentParser = group.add_parser(
        name, parents=[_COMMON], help=help, description=description or help
    )
    parser.set_defaults(func=_run(func))
    return parser


def _add_rate_limit_option(p: argparse._ActionsContainer, what: str) -> argparse.Action:
    return p.add_argument(
        "--rate-limit",
        metavar="N/PERIOD[+BURST]",
        help=f"{what}, e.g. 300/1m or 300/1m+50 (50 more at once)",
    )


def _add_sliding_window_option(p: argparse._ActionsContainer) -> argparse.Action:
    return p.add_argument(
        "--sliding-window",
        action="store_true",
        help="--rate-limit N/PERIOD is a sliding window: at most N in any PERIOD",
    )


def _add_attr_option(p: argparse._ActionsContainer, what: str) -> argparse.Action:
    return p.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"an attribute, e.g. role=sales-manager; repeat for more{what}",
    )


def _add_attr_options(p: argparse.ArgumentParser, whose: str) -> None:
    given = p.add_mutually_exclusive_group()
    _add_attr_option(given, f" (they replace all of the {whose}'s attributes)")
    given.add_argument(
        "--clear-attrs", action="store_true", help=f"remove all of the {whose}'s attributes"
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    orgs = sub.add_parser("orgs", help="manage orgs").add_subparsers(dest="action", required=True)
    p = add_command(orgs, "create", orgs_create, "create an org")
    p.add_argument("slug")
    p.add_argument("--name", help="display name (default: the slug)")
    p.add_argument("--plan", required=True, help="a plan from gateway.yaml")
    _add_attr_option(p, " (the org's keys inherit them)")
    add_command(orgs, "list", orgs_list, "list orgs")
    add_command(orgs, "show", orgs_show, "show an org").add_argument("org", help="org id or slug")
    p = add_command(orgs, "update", orgs_update, "rename an org, change its plan or attributes")
    p.add_argument("org", help="org id or slug")
    p.add_argument("--name", help="a new display name")
    p.add_argument("--plan", help="a plan from gateway.yaml")
    _add_attr_options(p, "org")

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
    _add_rate_limit_option(p, "this key's own limit instead of its plan's")
    _add_sliding_window_option(p)
    _add_attr_option(p, " (each in place of the org's of that name)")
    p = add_command(keys, "list", keys_list, "list an org's keys")
    p.add_argument("org", help="org id or slug")
    add_command(keys, "show", keys_show, "show a key").add_argument("key", help="key id (key_…)")
    p = add_command(
        keys,
        "update",
        keys_update,
        "rename a key or change its rate limit or attributes",
        description=f"Rename a key or change its rate limit or attributes ({_FIXED_AT_CREATION}).",
    )
    p.add_argument("key", help="key id (key_…)")
    p.add_argument("--name", help="a new name")
    limit = p.add_mutually_exclusive_group()
    _add_rate_limit_option(limit, "this key's own limit instead of its plan's")
    limit.add_argument(
        "--plan-rate-limit",
        action="store_true",
        help="drop the key's own limit: its plan's applies again",
    )
    _add_sliding_window_option(p)
    _add_attr_options(p, "key")
    add_command(keys, "revoke", keys_revoke, "revoke a key now").add_argument(
        "key", help="key id (key_…)"
    )
    p = add_command(
        keys,
        "rotate",
        keys_rotate,
        "replace a key; the old one works for --grace (default 0s: it stops at once)",
    )
    p.add_argument("key", help="key id (key_…)")
    p.add_argument(
        "--grace",
        default="0s",
        help="how long the old key keeps working, e.g. 24h (default: 0s, it stops at once)",
    )


def _run(func: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            func(args)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run
