"""One canonical path: ambiguous targets are refused; templates and the router match raw paths."""

from __future__ import annotations

import pytest

from gateway.dataplane.router import Router
from gateway.errors import BadRequest, MethodNotAllowed, RouteNotFound
from gateway.http.paths import split_target
from gateway.http.request_id import accept_request_id


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../admin",
        "/v1/./x",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/admin",
        "/v1/.%2e/admin",
        "/v1/%252e%252e/admin",  # double-encoded: a backend that decodes twice sees ".."
        "/v1/..;/admin",  # servlet containers read "..;" as ".."
        "/v1/%2e%2e;jsessionid=1/admin",
        "/v1/a%2fb",
        "/v1/a%2Fb",
        "/v1/a%252fb",
        "/v1/a%5cb",
        "/v1/a\\b",
        "/v1/a%00b",
        "/v1/..",
        "/..",
        "*",
        "v1/relative",
        "/v1/x#frag",
        # Spellings a backend normalises into another path, so a route's scopes could be skipped.
        "/v1/%61dmin/users",  # %61 is "a"
        "/v1/%7Eme",
        "/v1//admin/users",  # empty segment, merged by many servers
        "/v1/admin;x/users",  # ";params" dropped by servlet containers
        "/v1/%2%65%2%65/x",  # "%2" + "%65": ".." to a backend that decodes twice
        "/v1/%zz",
        "/v1/%2525%32%65",  # decodes to "%2e"
    ],
)
def test_ambiguous_targets_are_refused(target: str) -> None:
    with pytest.raises(BadRequest):
        split_target(target)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/v1/items", "/v1/items", ""),
        ("/v1/items?a=1&b=%2F", "/v1/items", "a=1&b=%2F"),  # the query may encode anything
        ("/v1/a%20b/%C3%A9", "/v1/a%20b/%C3%A9", ""),
        ("/v1/file.tar.gz", "/v1/file.tar.gz", ""),
        ("/v1/...", "/v1/...", ""),  # three dots is a plain name
        ("/v1/.well-known", "/v1/.well-known", ""),
        ("/v1/100%25", "/v1/100%25", ""),
        # Absolute form: the authority is dropped, never used for routing.
        ("http://evil.example/v1/items?x=1", "/v1/items", "x=1"),
        ("https://evil.example", "/", ""),
    ],
)
def test_plain_targets_pass_unchanged(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


def _router() -> Router[str]:
    return Router(
        [
            ("/v1/contacts", ["GET"], None, "list"),
            ("/v1/contacts", ["POST"], None, "create"),
            ("/v1/contacts/{id}", ["GET", "PATCH"], None, "one"),
            ("/v1/contacts/export", ["GET"], None, "export"),
            ("/v1/legacy/{rest:.*}", None, None, "legacy"),
            ("/internal", None, "admin.example.com", "internal"),
        ]
    )


def test_literal_paths_win_over_templates() -> None:
    assert _router().match("GET", "", "/v1/contacts/export").target == "export"


def test_template_parameters_are_captured_raw() -> None:
    match = _router().match("GET", "", "/v1/contacts/a%20b")
    assert (match.target, match.params) == ("one", {"id": "a%20b"})


def test_catch_all_template() -> None:
    match = _router().match("DELETE", "", "/v1/legacy/a/b/c")
    assert (match.target, match.params) == ("legacy", {"rest": "a/b/c"})


def test_methods_select_among_routes_of_one_path() -> None:
    router = _router()
    assert router.match("GET", "", "/v1/contacts").target == "list"
    assert router.match("POST", "", "/v1/contacts").target == "create"


def test_wrong_method_is_405_with_allow() -> None:
    with pytest.raises(MethodNotAllowed) as info:
        _router().match("DELETE", "", "/v1/contacts")
    assert dict(info.value.headers) == {"Allow": "GET, POST"}


def test_template_segment_does_not_cross_slash() -> None:
    with pytest.raises(RouteNotFound):
        _router().match("GET", "", "/v1/contacts/a/b")


def test_host_restricted_route() -> None:
    router = _router()
    assert router.match("GET", "admin.example.com", "/internal").target == "internal"
    with pytest.raises(RouteNotFound):
        router.match("GET", "api.example.com", "/internal")


@pytest.mark.parametrize(
    ("values", "kept"),
    [
        (["abc-123_X.y:z"], True),
        (["a" * 128], True),
        (["a" * 129], False),
        (["has space"], False),
        (['quote"'], False),
        (["a\r\nX-Injected: 1"], False),
        ([""], False),
        (["a", "b"], False),  # two ids: ambiguous, so neither
        ([], False),
    ],
)
def test_inbound_request_id(values: list[str], kept: bool) -> None:
    result = accept_request_id(values)
    assert (result == values[0]) if kept else (len(result) == 28 and result not in values)
