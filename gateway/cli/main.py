"""The ``gateway`` command: run, check, and manage orgs, keys and webhooks."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.cli.orgs_keys import add_commands as add_admin_commands
from gateway.cli.webhooks import add_commands as add_webhook_commands
from gateway.config import ConfigError, load_config
from gateway.config.schema import config_schema

DEFAULT_CONFIG = "gateway.yaml"


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.observability.log import configure_logging, flush_logs
    from gateway.process.run import WORKER_ENV, run_gateway

    try:
        loaded = load_config(_config_path(args))
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    configure_logging(loaded.config.log)
    try:
        return run_gateway(loaded, worker=os.environ.get(WORKER_ENV) == "1")
    finally:
        flush_logs()  # every exit path, early ones included, leaves its log lines


def cmd_check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    config = loaded.config
    print(
        f"{path}: ok ({_count(len(config.routes), 'route')},"
        f" {_count(len(config.upstreams), 'upstream')}, hash {loaded.digest})"
    )
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2, sort_keys=True))
    return 0


def _print_problems(exc: ConfigError) -> None:
    print(f"{_printable(exc.source)}: {len(exc.problems)} problem(s)", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {_printable(problem)}", file=sys.stderr)


# SECURITY: a key in a config may hold terminal escapes or newlines; one problem, one plain line.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="The API gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c", "--config", help=f"config file (default: $GATEWAY_CONFIG or {DEFAULT_CONFIG})"
        )
        return p

    with_config(sub.add_parser("run", help="serve traffic")).set_defaults(func=cmd_run)
    with_config(
        sub.add_parser("check", help="validate a config; print every problem; exit 1 if any")
    ).set_defaults(func=cmd_check)
    sub.add_parser("schema", help="print the JSON Schema of gateway.yaml").set_defaults(
        func=cmd_schema
    )
    add_admin_commands(sub)
    add_webhook_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
