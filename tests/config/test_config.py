"""gateway.yaml: every problem reported at once, with its path; interpolation; the schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.config.schema import config_schema
from gateway.config.types import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text.encode(), source="t.yaml", env=env or {})
    return info.value.problems


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    text = """
listen: {port: 70000, hots: x}
workers: 0
upstreams:
  crm: {targets: [http://127.0.0.1:1]}
routes:
  - {path: /v1/a, upstream: crm}
  - {path: /v1/b, upstream: crm}
  - {path: /v1/c, upstream: crmm, methdos: [GET]}
  - {path: /v1/d, upstream: crm, max_body_size: 10QB, timeouts: {read: 5x}}
"""
    assert problems(text) == [
        "listen.port: must be <= 65535 (got 70000)",
        "listen.hots: unknown key (did you mean 'host'?)",
        "workers: must be >= 1 (got 0)",
        "routes[2].upstream: unknown upstream 'crmm' (known: crm)",
        "routes[2].methdos: unknown key (did you mean 'methods'?)",
        "routes[3].timeouts.read: must be a duration like 2s, 500ms or 1m (got '5x')",
        "routes[3].max_body_size: must be a size like 10MiB or 512kb (got '10QB')",
    ]


def test_unknown_top_level_key_lists_known_keys_when_nothing_is_close() -> None:
    [problem] = problems("zzz: 1\n")
    assert problem.startswith("zzz: unknown key (known: listen, admin, workers, store,")


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("{path: v1, upstream: a}", "routes[0].path: must start with '/' (got 'v1')"),
        (
            "{path: '/v1/{x}/{x}', upstream: a}",
            "routes[0].path: parameter {x} appears twice in '/v1/{x}/{x}'",
        ),
        (
            "{path: '/v1/{x:[}', upstream: a}",
            "routes[0].path: bad regex for {x} in '/v1/{x:[}':"
            " unterminated character set at position 0",
        ),
        (
            "{path: '/v1/%2e%2e/x', upstream: a}",
            "routes[0].path: The path must not contain '.' or '..' segments, encoded or not.",
        ),
        (
            "{path: /v1, upstream: a, methods: []}",
            "routes[0].methods: must list at least one method, or be left out for all",
        ),
        (
            "{path: /v1, upstream: a, methods: ['GE T']}",
            "routes[0].methods: not an HTTP method: 'GE T'",
        ),
        ("{path: /v1}", "routes[0].upstream: required"),
        (
            "{path: /v1, upstream: a, timeouts: {read: -1}}",
            "routes[0].timeouts.read: must not be negative (got -1)",
        ),
    ],
)
def test_route_problems(route: str, expected: str) -> None:
    text = f"upstreams: {{a: {{targets: ['http://127.0.0.1:1']}}}}\nroutes:\n  - {route}\n"
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ("{}", "upstreams.a.targets: give at least one target (or builtin: echo)"),
        (
            "{targets: [ftp://x]}",
            "upstreams.a.targets: must be http(s)://host[:port][/base] URLs (got 'ftp://x')",
        ),
        (
            "{targets: ['http://u:p@x']}",
            "upstreams.a.targets: must not carry a query, fragment or credentials (got 'http://u:p@x')",
        ),
        (
            "{targets: ['http://x'], builtin: echo}",
            "upstreams.a.builtin: use either targets or builtin, not both",
        ),
        ("{builtin: cat}", "upstreams.a.builtin: must be one of 'echo' (got 'cat')"),
    ],
)
def test_upstream_problems(upstream: str, expected: str) -> None:
    assert problems(f"upstreams: {{a: {upstream}}}\n") == [expected]


def test_store_and_admin_problems() -> None:
    assert problems("store: {backend: redis}\nadmin: {token: short}\n") == [
        "admin.token: must be at least 16 characters",
        "store.url: required when backend is redis",
    ]


def test_webhook_problems() -> None:
    text = """
webhooks:
  legacy_header: "X Bad"
  retry_schedule: [5s, 0s]
  timeout: 0s
  api_path: /v1/{x}
  stream: "no spaces"
plans: {free: {webhook_endpoints: -1}}
"""
    assert problems(text) == [
        "plans.free.webhook_endpoints: must be >= 0 (got -1)",
        "webhooks.legacy_header: must be a header name like X-Acme-Signature (got 'X Bad')",
        "webhooks.timeout: must be > 0 (got 0s)",
        "webhooks.retry_schedule[1]: must be > 0 (got 0s)",
        "webhooks.api_path: must be a literal path like /v1/webhooks (got '/v1/{x}')",
        "webhooks.stream: must be 1-64 characters of [A-Za-z0-9_.:-] (got 'no spaces')",
    ]
    assert problems("webhooks: {legacy_header: webhook-signature}\n") == [
        "webhooks.legacy_header: must be a header name like X-Acme-Signature"
        " (got 'webhook-signature')"
    ]
    routes = """
upstreams: {a: {targets: ['http://x']}}
routes: [{path: "/v1/webhooks/{rest:.*}", upstream: a}]
"""
    assert problems(routes) == [
        "routes: routes[0] path /v1/webhooks/{rest:.*} is under webhooks.api_path"
        " (/v1/webhooks); move one of them or set webhooks.api_path: null"
    ]
    parse_config((routes + "webhooks: {api_path: null}\n").encode(), source="t.yaml", env={})
    assert problems("webhooks: {retention: 1d, key_expiring_notice: 2d}\n") == [
        "webhooks: retention must be at least key_expiring_notice (86400s < 172800s)"
    ]


def test_interpolation_of_variables_defaults_and_dollar() -> None:
    text = """
listen: {port: "${PORT}"}
admin: {token: "${TOKEN:-a-default-token-0123456789}", host: "${EMPTY:-127.0.0.2}"}
store: {path: "$$HOME/${NAME}.db"}
"""
    loaded = parse_config(text.encode(), source="t", env={"PORT": "8181", "NAME": "s", "EMPTY": ""})
    assert loaded.config.listen.port == 8181
    assert loaded.config.admin.token == "a-default-token-0123456789"
    assert loaded.config.admin.host == "127.0.0.2"
    assert loaded.config.store.path == "$HOME/s.db"


def test_missing_variable_names_the_field() -> None:
    assert problems("admin: {token: '${GATEWAY_ADMIN_TOKEN}'}\n") == [
        "admin.token: environment variable GATEWAY_ADMIN_TOKEN is not set"
        " (write ${GATEWAY_ADMIN_TOKEN:-default} to give a default)"
    ]


def test_yaml_syntax_error_gives_line_and_column() -> None:
    [problem] = problems("listen: {port: 1\nroutes: [\n")
    assert problem.startswith("line ")


def test_duplicate_keys_are_refused() -> None:
    [problem] = problems("workers: 1\nworkers: 2\n")
    assert "duplicate key 'workers'" in problem


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["the file must hold a mapping of settings"]


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/gateway.yaml")
    assert info.value.problems == ["cannot read the file: No such file or directory"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1.5h", 5400.0), ("1d", 86400.0), (3, 3.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("10MiB", 10 * 1024 * 1024), ("512kb", 512_000), (1024, 1024), ("1 GiB", 1024**3)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


UPSTREAM = "upstreams: {crm: {targets: ['http://127.0.0.1:1']}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstreams: {crm: {targets: ['http://127.0.0.1:1'], timeouts: {read: .nan}}}\n",
            "upstreams.crm.timeouts.read: must be a finite duration (got nan)",
        ),
        (
            "upstreams: {crm: {targets: ['http://127.0.0.1:1'], timeouts: {connect: .inf}}}\n",
            "upstreams.crm.timeouts.connect: must be a finite duration (got inf)",
        ),
        (
            UPSTREAM + "routes: [{path: /a, upstream: crm, timeouts: {read: .nan}}]\n",
            "routes[0].timeouts.read: must be a finite duration (got nan)",
        ),
        (
            "server: {body_timeout: .nan}\n",
            "server.body_timeout: must be a finite duration (got nan)",
        ),
        (
            "server: {drain_timeout: .inf}\n",
            "server.drain_timeout: must be a finite duration (got inf)",
        ),
        ("keys: {cache_ttl: .nan}\n", "keys.cache_ttl: must be a finite duration (got nan)"),
        ("idempotency: {ttl: .inf}\n", "idempotency.ttl: must be a finite duration (got inf)"),
        ("reload: {interval: .nan}\n", "reload.interval: must be a finite duration (got nan)"),
        ("cors: {max_age: .inf}\n", "cors.max_age: must be a finite duration (got inf)"),
        (
            "webhooks: {retry_schedule: [5s, .nan]}\n",
            "webhooks.retry_schedule[1]: must be a finite duration (got nan)",
        ),
        ("webhooks: {jitter: .nan}\n", "webhooks.jitter: must be a finite number (got nan)"),
        (
            "upstreams: {crm: {targets: ['http://127.0.0.1:1'], retry_budget: -.inf}}\n",
            "upstreams.crm.retry_budget: must be a finite number (got -inf)",
        ),
        (
            "plans: {free: {rate_limit: {requests: 10, per: .nan}}}\n",
            "plans.free.rate_limit.per: must be a finite duration (got nan)",
        ),
        ("workers: .nan\n", "workers: must be a finite number (got nan)"),
    ],
)
def test_nan_and_infinity_are_refused_by_field_name(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstreams: {crm: {targets: ['http://127.0.0.1:1'], timeouts: {read: 2d}}}\n",
            "upstreams.crm.timeouts.read: must be at most 1d (got '2d')",
        ),
        ("server: {idle_timeout: 25h}\n", "server.idle_timeout: must be at most 1d (got '25h')"),
        ("idempotency: {ttl: 8d}\n", "idempotency.ttl: must be at most 7d (got '8d')"),
        (
            "webhooks: {retry_schedule: [5s, 8d]}\n",
            "webhooks.retry_schedule[1]: must be at most 7d (got '8d')",
        ),
        (
            "webhooks: {secret_overlap: 31d}\n",
            "webhooks.secret_overlap: must be at most 30d (got '31d')",
        ),
        ("reload: {interval: 1ms}\n", "reload.interval: must be at least 10ms (got '1ms')"),
        (
            "webhooks: {poll_interval: 0s}\n",
            "webhooks.poll_interval: must be at least 10ms (got '0s')",
        ),
        (
            "upstreams: {crm: {targets: ['http://127.0.0.1:1'], timeouts: {connect: 0s}}}\n",
            "upstreams.crm.timeouts.connect: must be > 0 (got 0s)",
        ),
        (
            "plans: {free: {rate_limit: {requests: 1, per: 366d}}}\n",
            "plans.free.rate_limit.per: must be at most 365d (got '366d')",
        ),
        (
            "plans: {free: {rate_limit: {requests: 1, per: 1d, burst: 400}}}\n",
            "plans.free.rate_limit.burst: 1 + 400 requests take 401d to refill at 1 per 86400s;"
            " at most 365d (lower burst or per)",
        ),
        (
            "server: {max_header_size: 2MiB}\n",
            "server.max_header_size: must be at most 1MiB (got '2MiB')",
        ),
        (
            "idempotency: {max_response_body: 65MiB}\n",
            "idempotency.max_response_body: must be at most 64MiB (got '65MiB')",
        ),
        ("webhooks: {jitter: 0.6}\n", "webhooks.jitter: must be between 0 and 0.5 (got 0.6)"),
    ],
)
def test_durations_sizes_and_fractions_have_bounds(text: str, expected: str) -> None:
    assert problems(text) == [expected]


BIG = 10**30
HUGE = 10**400  # beyond a float
HUGE_SHOWN = f"{str(HUGE)[:40]}...{str(HUGE)[-8:]} (401 characters)"
CRM = "upstreams: {crm: {targets: ['http://127.0.0.1:1'], %s}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            CRM % f"max_connections: {BIG}",
            f"upstreams.crm.max_connections: must be <= 100000 (got {BIG})",
        ),
        (
            f"plans: {{free: {{quota: {{requests: {BIG}, per: month}}}}}}\n",
            f"plans.free.quota.requests: must be <= 1000000000000 (got {BIG})",
        ),
        (
            f"server: {{body_timeout: {HUGE}}}\n",
            f"server.body_timeout: must be at most 1d (got {HUGE_SHOWN})",
        ),
        (
            f"server: {{body_timeout: '{HUGE}s'}}\n",
            f"server.body_timeout: must be at most 1d"
            f" (got '{str(HUGE)[:39]}...{str(HUGE)[-6:]}s' (404 characters))",
        ),
        (
            CRM % f"retry_budget: {HUGE}",
            f"upstreams.crm.retry_budget: must be between 0 and 1 (got {HUGE_SHOWN})",
        ),
        ("cors: {max_age: 1.0e+400}\n", "cors.max_age: must be a finite duration (got inf)"),
        (
            "listen: {port: 0x" + "F" * 2000 + "}\n",
            "line 1, column 16: an integer this long is not a setting",
        ),
        (
            "listen: {port: " + "9" * 5000 + "}\n",
            "line 1, column 16: an integer this long is not a setting",
        ),
    ],
)
def test_huge_numbers_are_refused_by_field_name(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_bounds_hold_for_values_from_the_environment() -> None:
    text = "server: {body_timeout: '${T}'}\nwebhooks: {jitter: '${J}'}\nworkers: '${W}'\n"
    assert problems(text, env={"T": "nan", "J": "nan", "W": "1e400"}) == [
        "workers: must be a whole number (got '1e400')",
        "server.body_timeout: must be a duration like 2s, 500ms or 1m (got 'nan')",
        "webhooks.jitter: must be a finite number (got 'nan')",
    ]
    config = parse_config(text.encode(), source="t", env={"T": "90s", "J": "0.25", "W": "1"}).config
    assert (config.server.body_timeout, config.webhooks.jitter, config.workers) == (90.0, 0.25, 1)


def test_config_is_immutable() -> None:
    loaded = parse_config(b"workers: 1\n", source="t", env={})
    with pytest.raises(Exception, match="frozen"):
        loaded.config.workers = 2  # type: ignore[misc]


def test_shipped_gateway_yaml_is_valid() -> None:
    loaded = load_config(ROOT / "gateway.yaml")
    assert loaded.config.store.backend == "local"
    assert loaded.config.upstreams["demo"].builtin == "echo"


def test_committed_schema_matches_the_models() -> None:
    """config/gateway.schema.json is generated; regenerate with `make schema` when this fails."""
    committed = json.loads((ROOT / "config" / "gateway.schema.json").read_text())
    assert committed == json.loads(json.dumps(config_schema()))


def test_gateway_yaml_references_the_schema() -> None:
    first_line = (ROOT / "gateway.yaml").read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=config/gateway.schema.json"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_command_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "upstreams: {crm: {targets: ['http://127.0.0.1:1']}}\nroutes:\n"
        "  - {path: /a, upstream: crm}\n  - {path: /b, upstream: crm}\n"
        "  - {path: /c, upstream: crmm}\n"
    )
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: 1 problem(s)",
        "  routes[2].upstream: unknown upstream 'crmm' (known: crm)",
    ]


def test_check_command_exits_0_for_a_valid_file() -> None:
    result = run_cli("check", "-c", str(ROOT / "gateway.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{ROOT / 'gateway.yaml'}: ok (4 routes, 1 upstream, hash ")


def test_run_with_broken_config_exits_1_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("workers: many\n")
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 1
    assert "workers: must be a whole number (got 'many')" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "path", sorted((ROOT / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_example_configs_are_valid(path: Path) -> None:
    load_config(path, env={"GATEWAY_ADMIN_TOKEN": "t" * 32})


def test_run_reports_a_start_failure_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: {host: 127.0.0.1, port: 0}\n"
        "admin: {host: 127.0.0.1, port: 0, token_file: /proc/no-such-dir/admin-token}\n"
        f"store: {{path: {tmp_path / 'state.db'}}}\n"
    )
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 1
    assert '"event":"gateway_start_failed"' in result.stdout


def test_a_worker_refuses_a_config_that_changed_under_its_supervisor(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"listen: {{port: 0}}\nstore: {{path: {tmp_path / 'state.db'}}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "GATEWAY_WORKER": "1", "GATEWAY_CONFIG_DIGEST": "000000000000"},
    )
    assert result.returncode == 1
    assert "the config file changed since the gateway started" in result.stdout


@pytest.mark.parametrize(
    "name",
    [
        "X-Request-Id",
        "X_Forwarded_For",
        "Forwarded",
        "X-Real-Ip",
        "x-org-id",
        "X-Scopes",
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "RateLimit-Policy",
        "X-RateLimit-Reset",
        "Idempotent-Replayed",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Upgrade",
        "Expect",
        "Access-Control-Allow-Origin",
    ],
)
def test_route_header_rules_may_not_touch_what_the_gateway_owns(name: str) -> None:
    """Setting one of these would re-open spoofing (identity, forwarding), break the framing
    (hop-by-hop), or tell clients something false (a replay, a limit)."""
    for where in ("request", "response"):
        text = (
            "upstreams: {a: {targets: ['http://127.0.0.1:1']}}\n"
            f"routes: [{{path: /x, upstream: a, headers: {{{where}: {{set: {{'{name}': v}}}}}}}}]\n"
        )
        (problem,) = problems(text)
        assert f"{name} is set by the gateway itself" in problem, problem
