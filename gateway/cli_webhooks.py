"""``gateway webhooks …`` and ``gateway events publish``: webhooks through the admin API."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from gateway.cli_admin import CliError, add_command, client_from, show

ENDPOINT_COLUMNS = (
    "id",
    "url",
    "events",
    "status",
    "disabledReason",
    "secretRotating",
    "description",
    "createdAt",
)
DELIVERY_COLUMNS = (
    "id",
    "eventType",
    "status",
    "attempts",
    "lastStatus",
    "nextAttemptAt",
    "createdAt",
)


def _id(value: str) -> str:
    """One path segment: an id or slug as typed, never a way to another admin path."""
    return quote(value, safe="")


def _events(args: argparse.Namespace) -> list[str] | None:
    """--events a,b and --event a (each repeatable) as one list; None when neither was given."""
    given = [*(args.events or []), *(args.event or [])]
    if not given:
        return None
    found = [part.strip() for value in given for part in value.split(",")]
    return list(dict.fromkeys(part for part in found if part))


def webhooks_create(args: argparse.Namespace) -> None:
    events = _events(args)
    if not events:
        raise CliError('name the events: --events invoice.created,invoice.paid (or "*" for all)')
    body: dict[str, Any] = {"url": args.url, "events": events}
    if args.description is not None:
        body["description"] = args.description
    result = client_from(args).call("POST", f"/admin/orgs/{_id(args.org)}/webhooks", body)
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_list(args: argparse.Namespace) -> None:
    result = client_from(args).call("GET", f"/admin/orgs/{_id(args.org)}/webhooks")
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_show(args: argparse.Namespace) -> None:
    show(args, client_from(args).call("GET", f"/admin/webhooks/{_id(args.id)}"), ENDPOINT_COLUMNS)


def webhooks_update(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.url is not None:
        body["url"] = args.url
    events = _events(args)
    if events is not None:
        body["events"] = events
    if args.description is not None:
        body["description"] = args.description
    if args.status is not None:
        body["status"] = args.status
    if not body:
        raise CliError(
            "nothing to change: give --url, --events, --description, --enable or --disable"
        )
    result = client_from(args).call("PATCH", f"/admin/webhooks/{_id(args.id)}", body)
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_delete(args: argparse.Namespace) -> None:
    result = client_from(args).call("DELETE", f"/admin/webhooks/{_id(args.id)}")
    show(args, result, ("id", "deleted"))


def webhooks_rotate(args: argparse.Namespace) -> None:
    body = {} if args.overlap is None else {"overlap": args.overlap}
    result = client_from(args).call("POST", f"/admin/webhooks/{_id(args.id)}/rotate", body)
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_ping(args: argparse.Namespace) -> None:
    result = client_from(args).call("POST", f"/admin/webhooks/{_id(args.id)}/ping", {})
    show(args, result, ("eventId",))


def webhooks_deliveries(args: argparse.Namespace) -> None:
    result = client_from(args).call("GET", f"/admin/webhooks/{_id(args.id)}/deliveries")
    show(args, result, DELIVERY_COLUMNS)


def webhooks_retry(args: argparse.Namespace) -> None:
    result = client_from(args).call("POST", f"/admin/deliveries/{_id(args.delivery)}/retry", {})
    show(args, result, DELIVERY_COLUMNS)


def events_publish(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"org": args.org, "type": args.type}
    if args.data is not None:
        try:
            body["data"] = json.loads(args.data)
        except ValueError as exc:
            raise CliError(f"--data is not valid JSON: {exc}") from None
    show(args, client_from(args).call("POST", "/admin/events", body), ("id",))


def _add_event_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--events",
        action="append",
        metavar="TYPES",
        help='comma-separated event types, or "*" for every type',
    )
    p.add_argument(
        "--event", action="append", metavar="TYPE", help="an event type; repeat for more"
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks = sub.add_parser("webhooks", help="manage webhook endpoints").add_subparsers(
        dest="action", required=True
    )
    p = add_command(
        webhooks, "create", webhooks_create, "add an endpoint (its secret is shown once)"
    )
    p.add_argument("org", help="org id or slug")
    p.add_argument("--url", required=True, help="where deliveries are POSTed (https://…)")
    _add_event_options(p)
    p.add_argument("--description", help="what the endpoint is for")
    p = add_command(webhooks, "list", webhooks_list, "list an org's endpoints")
    p.add_argument("org", help="org id or slug")
    add_command(webhooks, "show", webhooks_show, "show an endpoint").add_argument(
        "id", help="endpoint id (wh_…)"
    )
    p = add_command(webhooks, "update", webhooks_update, "change an endpoint")
    p.add_argument("id", help="endpoint id (wh_…)")
    p.add_argument("--url", help="a new target URL")
    _add_event_options(p)
    p.add_argument("--description", help='a new description ("" clears it)')
    status = p.add_mutually_exclusive_group()
    status.add_argument(
        "--enable", dest="status", action="store_const", const="enabled", help="deliver again"
    )
    status.add_argument(
        "--disable", dest="status", action="store_const", const="disabled", help="stop delivering"
    )
    add_command(webhooks, "delete", webhooks_delete, "delete an endpoint").add_argument(
        "id", help="endpoint id (wh_…)"
    )
    p = add_command(
        webhooks, "rotate", webhooks_rotate, "new signing secret; the old one signs for --overlap"
    )
    p.add_argument("id", help="endpoint id (wh_…)")
    p.add_argument(
        "--overlap", help="how long the old secret also signs (default: webhooks.secret_overlap)"
    )
    for name, func, what in (
        ("ping", webhooks_ping, "send a webhook.ping event to an endpoint"),
        ("deliveries", webhooks_deliveries, "list an endpoint's recent deliveries"),
    ):
        add_command(webhooks, name, func, what).add_argument("id", help="endpoint id (wh_…)")
    p = add_command(webhooks, "retry", webhooks_retry, "deliver a delivery again, now")
    p.add_argument("delivery", help="delivery id (dlv_…)")

    events = sub.add_parser("events", help="publish events").add_subparsers(
        dest="action", required=True
    )
    p = add_command(events, "publish", events_publish, "send an event to an org's endpoints")
    p.add_argument("org", help="org id or slug")
    p.add_argument("type", help="event type, e.g. invoice.created")
    p.add_argument("--data", help="the event's data as JSON (default: {})")
