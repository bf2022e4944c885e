"""``gateway webhooks …`` and ``gateway events publish``: webhooks through the admin API."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from gateway.cli.orgs_keys import CliError, add_command, client_from, segment, show

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
    result = client_from(args).call("POST", f"/admin/orgs/{segment(args.org)}/webhooks", body)
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_list(args: argparse.Namespace) -> None:
    result = client_from(args).call("GET", f"/admin/orgs/{segment(args.org)}/webhooks")
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_show(args: argparse.Namespace) -> None:
    show(
        args, client_from(args).call("GET", f"/admin/webhooks/{segment(args.id)}"), ENDPOINT_COLUMNS
    )


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
    result = client_from(args).call("PATCH", f"/admin/webhooks/{segment(args.id)}", body)
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_delete(args: argparse.Namespace) -> None:
    result = client_from(args).call("DELETE", f"/admin/webhooks/{segment(args.id)}")
    show(args, result, ("id", "deleted"))


def webhooks_rotate(args: argparse.Namespace) -> None:
    body = {} if args.overlap is None else {"overlap": args.overlap}
    result = client_from(args).call("POST", f"/admin/webhooks/{segment(args.id)}/rotate", body)
    show(args, result, ENDPOINT_COLUMNS)


def webhooks_ping(args: argparse.Namespace) -> None:
    result = client_from(args).call("POST", f"/admin/webhooks/{segment(args.id)}/ping", {})
    show(args, result, ("eventId",))


def webhooks_deliveries(args: argparse.Namespace) -> None:
    result = client_from(args).call("GET", f"/admin/webhooks/{segment(args.id)}/deliveries")
    show(args, result, DELIVERY_COLUMNS)


def webhooks_retry(args: argparse.Namespace) -> None:
    result = client_from(args).call("POST", f"/admin/deliveries/{segment(args.delivery)}/retry", {})
    show(args, result, DELIVERY_COLUMNS)


def events_publish(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"org": args.org, "type": args.type}
    if args.data is not None:
        try:
            body["data"] = json.loads(args.data)
        except ValueError as exc:
            raise CliError(f"--data is not valid JSON: {exc}") from None
    show(args, client_from(args).call("POST", "/admin/events", body), ("id",))


def webhooks_listen(args: argparse.Namespace) -> int:
    """A local receiver for trying webhooks: one line per delivery on stdout, until Ctrl-C."""
    from gateway.process.echo_backend import WebhookReceiver
    from gateway.webhooks.signing import signature

    if args.secret is not None:
        try:
            signature(args.secret, "msg", 0, b"")
        except ValueError:
            print("error: --secret: not a webhook secret (whsec_…)", file=sys.stderr)
            return 1
    if not 200 <= args.status <= 599:
        print(f"error: --status: must be 200 to 599 (got {args.status})", file=sys.stderr)
        return 1
    receiver = WebhookReceiver(args.secret, args.status)

    async def serve() -> None:
        runner, url = await receiver.start(args.host, args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(
            f"listening for webhook deliveries on {url} (any path; Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


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

    p = webhooks.add_parser(
        "listen",
        help="receive webhooks locally: print each delivery, check its signature",
        description="A webhook receiver for trying deliveries on one machine: it prints one"
        " line per delivery and, given the endpoint's secret, checks its signature (a bad one"
        " is answered 401). The gateway delivers to it only with"
        " webhooks.allow_private_targets: true (GATEWAY_WEBHOOKS_ALLOW_PRIVATE=true with the"
        " shipped gateway.yaml).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8099, help="port (default: 8099; 0: any free one)")
    p.add_argument("--secret", help="the endpoint's whsec_… secret, to check signatures")
    p.add_argument(
        "--status",
        type=int,
        default=200,
        help="answer deliveries with this status (default: 200; e.g. 500 to watch retries)",
    )
    p.set_defaults(func=webhooks_listen)

    events = sub.add_parser("events", help="publish events").add_subparsers(
        dest="action", required=True
    )
    p = add_command(events, "publish", events_publish, "send an event to an org's endpoints")
    p.add_argument("org", help="org id or slug")
    p.add_argument("type", help="event type, e.g. invoice.created")
    p.add_argument("--data", help="the event's data as JSON (default: {})")
