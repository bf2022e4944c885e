"""config/gateway.schema.json, judged by an independent validator (check-jsonschema): a valid
JSON Schema, true to the shipped configs as written (``${VAR}`` references included), and strict
about what ``gateway check`` refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "gateway.schema.json"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
SHIPPED = [ROOT / "gateway.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml"))]


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_schema_is_valid_json_schema_with_ecma_262_patterns() -> None:
    result = check_jsonschema("--check-metaschema", str(SCHEMA))
    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_configs_pass_the_schema_as_written() -> None:
    assert "${GATEWAY_PORT:-8080}" in SHIPPED[0].read_text()  # references, not values
    result = check_jsonschema("--schemafile", str(SCHEMA), *map(str, SHIPPED))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_kind_of_scalar_may_be_a_reference(tmp_path: Path) -> None:
    text = """
listen: {port: "${PORT:-8080}"}
workers: "${WORKERS:-1}"
store: {backend: "${STORE:-local}", key_prefix: "${PREFIX:-gw}"}
server: {body_timeout: "${BODY_TIMEOUT:-30s}", max_header_size: "${HEADERS:-8KiB}"}
log: {access_log: "${ACCESS_LOG:-true}"}
keys: {prefix: "${KEY_PREFIX:-fw}"}
webhooks: {allow_private_targets: "${PRIVATE:-false}", jitter: "${JITTER:-0.1}"}
upstreams:
  crm:
    targets: ["${CRM_URL:-http://127.0.0.1:1}"]
    timeouts: {read: "${READ:-30s}"}
    max_concurrency: "${CONCURRENCY:-100}"
routes:
  - path: /v1/a
    upstream: crm
    deprecation: {deprecated_at: "${DEPRECATED:-2026-01-01}"}
"""
    path = tmp_path / "references.yaml"
    path.write_text(text)
    parse_config(text.encode(), source=str(path), env={})  # valid as interpolated
    result = check_jsonschema("--schemafile", str(SCHEMA), str(path))
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN = {
    "wrong-type": "workers: many\n",
    "unknown-key": "listen: {hots: 0.0.0.0}\n",
    "bad-duration": "server: {body_timeout: 5x}\n",
    "negative-duration": "server: {body_timeout: -5}\n",
    "duration-over-its-bound": "upstreams: {a: {targets: ['http://x'], timeouts: {read: 90000}}}\n",
    "bad-size": "server: {max_header_size: 10QB}\n",
    "port-out-of-range": "listen: {port: 70000}\n",
    "not-a-boolean": "webhooks: {allow_private_targets: maybe}\n",
    "unknown-enum-value": "store: {backend: postgres}\n",
    "half-a-reference": "listen: {port: '${PORT'}\n",
}


def test_broken_configs_fail_the_schema_and_gateway_check(tmp_path: Path) -> None:
    paths = []
    for name, text in BROKEN.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
        with pytest.raises(ConfigError):  # gateway check agrees
            parse_config(text.encode(), source=name, env={})
    result = check_jsonschema("--schemafile", str(SCHEMA), *map(str, paths))
    assert result.returncode == 1
    refused = {name for name in BROKEN if f"{name}.yaml::" in result.stdout}
    assert refused == set(BROKEN), result.stdout
