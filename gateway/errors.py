"""The one exception tree; each error renders the one JSON envelope."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web

from gateway.http.headers import stamp

_CHALLENGE = "WWW-Authenticate"


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

    # The codes this error is looked up by in an error map, first match wins.
    @property
    def mapped_by(self) -> tuple[str, ...]:
        return (self.code,)

    def render(
        self,
        request_id: str,
        extra_headers: Iterable[tuple[str, str]] = (),
        error_map: ErrorMap | None = None,
    ) -> web.Response:
        status, code, message, own_headers = self.status, self.code, self.message, self.headers
        answer = error_map.answer_for(self) if error_map is not None else None
        if answer is not None:
            status = answer.status or status
            code = answer.code or code
            message = answer.message or message
            own_headers = _challenge_for(status, own_headers)
        body = orjson.dumps({"error": {"code": code, "message": message, "request_id": request_id}})
        response = web.Response(status=status, body=body, content_type="application/json")
        headers = response.headers
        headers["Cache-Control"] = "no-store"
        for name, value in own_headers:
            headers[name] = value
        stamp(headers, request_id, extra_headers)
        if self.close_connection:
            response.force_close()
        return response


@dataclass(frozen=True, slots=True)
class Answer:
    """How one of our codes is answered instead (None: as ours)."""

    status: int | None = None
    code: str | None = None
    message: str | None = None


class ErrorMap:
    """The config's ``errors:``: our codes answered with other statuses, codes and messages."""

    def __init__(self, answers: Mapping[str, Answer], own_status: Mapping[str, int]) -> None:
        self._answers = dict(answers)
        self._own_status = own_status  # each mappable code's status when unmapped

    def answer_for(self, error: GatewayError) -> Answer | None:
        for code in error.mapped_by:
            answer = self._answers.get(code)
            if answer is not None:
                # A status is mapped only where it is the code's own: the 431 that says
                # bad_request keeps its status whatever bad_request is answered with.
                if answer.status is not None and error.status != self._own_status.get(code):
                    return Answer(None, answer.code, answer.message)
                return answer
        return None


def _challenge_for(
    status: int, headers: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """Keep WWW-Authenticate true to the status an error is answered with.

    A 401 must carry a challenge (RFC 9110), so one is added where our error had none; a Bearer
    challenge means nothing on a status other than 401 or 403 (RFC 6750), so it goes there.
    """
    has = any(name == _CHALLENGE for name, _ in headers)
    if status == 401 and not has:
        return (*headers, (_CHALLENGE, 'Bearer realm="api"'))
    if status not in (401, 403) and has:
        return tuple((name, value) for name, value in headers if name != _CHALLENGE)
    return headers


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

    def __init__(self, message: str | None = None, *, description: str | None = None) -> None:
        challenge = 'Bearer realm="api", error="invalid_token"'
        if description is not None:  # RFC 6750 3: one fixed text, the same for every reason
            challenge += f', error_description="{description}"'
        super().__init__(message, headers=[("WWW-Authenticate", challenge)])


class InsufficientScope(GatewayError):
    status, code = 403, "insufficient_scope"

    def __init__(self, required: list[str], *, credential: str = "API key") -> None:
        needed = " ".join(required)
        super().__init__(
            f"This {credential} lacks the scope {needed}.",
            headers=[
                (
                    "WWW-Authenticate",
                    f'Bearer realm="api", error="insufficient_scope", scope="{needed}"',
                )
            ],
        )


class NoScopes(InsufficientScope):
    """A key with no scopes at all, on a route that needs some: its own code in an error map
    (a seed answers it 403 no-scope), else answered as insufficient_scope."""

    @property
    def mapped_by(self) -> tuple[str, ...]:
        return ("no_scopes", "insufficient_scope")


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
