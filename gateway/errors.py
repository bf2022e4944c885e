"""The one exception tree; each error renders the one JSON envelope."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from aiohttp import web

from gateway.http.headers import stamp


class GatewayError(Exception):
    """An error the gateway answers itself: a status, a stable code and a message for people."""

    status: int = 500
    code: str = "internal_error"
    message: str = "The gateway failed to handle the request."
    # Close the client connection after answering: its unread body must not be parsed as the
    # next request, nor drained at length.
    close_connection: bool = False

    def __init__(
        self,
        message: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        close_connection: bool | None = None,
    ) -> None:
        self.message = message or self.message
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        if close_connection is not None:
            self.close_connection = close_connection
        super().__init__(self.message)

    def render(
        self, request_id: str, extra_headers: Iterable[tuple[str, str]] = ()
    ) -> web.Response:
        body = orjson.dumps(
            {"error": {"code": self.code, "message": self.message, "request_id": request_id}}
        )
        response = web.Response(status=self.status, body=body, content_type="application/json")
        headers = response.headers
        headers["Cache-Control"] = "no-store"
        for name, value in self.headers:
            headers[name] = value
        stamp(headers, request_id, extra_headers)
        if self.close_connection:
            response.force_close()
        return response


class BadRequest(GatewayError):
    status, code, message = 400, "bad_request", "The request is malformed."


class MalformedRequest(BadRequest):
    """What the HTTP parser refused; nothing of the request is echoed back."""

    message = "The request could not be parsed as HTTP/1.1."


class HeadersTooLarge(GatewayError):
    status, code, message = 431, "bad_request", "The request header fields are too large."


# The 408 of a request head that did not arrive by server.header_timeout.
HEAD_TIMEOUT_MESSAGE = "The request head did not arrive in time."


class Unauthorized(GatewayError):
    """One answer for a missing, malformed, unknown, revoked or expired key: nothing to probe."""

    status, code, message = 401, "unauthorized", "A valid API key is required."

    def __init__(self) -> None:
        super().__init__(
            headers=[("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"')]
        )


class InsufficientScope(GatewayError):
    status, code = 403, "insufficient_scope"

    def __init__(self, required: list[str]) -> None:
        needed = " ".join(required)
        super().__init__(
            f"This API key lacks the scope {needed}.",
            headers=[
                (
                    "WWW-Authenticate",
                    f'Bearer realm="api", error="insufficient_scope", scope="{needed}"',
                )
            ],
        )


class IpNotAllowed(GatewayError):
    status, code, message = 403, "ip_not_allowed", "This API key may not be used from this address."

    def __init__(self) -> None:
        super().__init__(
            headers=[("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"')]
        )


class ApiAccessDisabled(GatewayError):
    status, code, message = (
        403,
        "api_access_disabled",
        "This organization's plan has no API access.",
    )


class RouteNotFound(GatewayError):
    status, code, message = 404, "route_not_found", "No route matches this path."


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"

    def __init__(self, allowed: Iterable[str]) -> None:
        allow = ", ".join(sorted(set(allowed)))
        super().__init__(f"This route accepts {allow}.", headers=[("Allow", allow)])


class PayloadTooLarge(GatewayError):
    status, code, close_connection = 413, "payload_too_large", True

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body exceeds the limit of {limit} bytes.")


class RequestTimeout(GatewayError):
    # Answered when the client stops sending its body; the connection is not reused.
    status, code, message = 408, "request_timeout", "The request body did not arrive in time."
    close_connection = True


class ClientDisconnected(GatewayError):
    """The client went away before the answer (nginx's 499): its outcome, not a server error."""

    status, code, message = 499, "client_closed_request", "The client closed the connection."
    close_connection = True


class ExpectationFailed(GatewayError):
    status, code = 417, "expectation_failed"
    message = "The only expectation the gateway meets is Expect: 100-continue."
    close_connection = True


class BadGateway(GatewayError):
    status, code, message = 502, "bad_gateway", "The upstream service failed to answer."


class Unavailable(GatewayError):
    status, code, message = 503, "unavailable", "The service is unavailable; try again later."


class GatewayTimeout(GatewayError):
    status, code, message = 504, "gateway_timeout", "The upstream service did not answer in time."


class InternalError(GatewayError):
    """Unexpected failure: the traceback goes to the log, never to the client."""
