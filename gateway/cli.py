"""The ``gateway`` command: run, check, and manage orgs, keys and webhooks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.cli_admin import add_commands as add_admin_commands
from gateway.cli_webhooks import add_commands as add_webhook_commands
from gateway.config import ConfigError, GatewayConfig, load_config

DEFAULT_CONFIG = "gateway.yaml"


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.log import configure_logging, flush_logs
    from gateway.server import WORKER_ENV, run_gateway

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
        f"{path}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams,"
        f" hash {loaded.digest})"
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2, sort_keys=True))
    return 0


def config_schema() -> dict[str, object]:
    """The JSON Schema of gateway.yaml, as committed in config/gateway.schema.json."""
    schema = GatewayConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gateway.yaml"
    return schema


def _print_problems(exc: ConfigError) -> None:
    print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


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
