"""aiohttp's low-level server, with the answers it gives on its own rendered as our envelope.

aiohttp answers malformed requests (bad request line, oversized headers) and handler crashes
itself, as plain text. A client of the gateway must get the one JSON error envelope for those
too, with a request id, and no detail from the parser echoed back.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.errors import BadRequest, GatewayError, GatewayTimeout, InternalError
from gateway.request_id import new_request_id

log = structlog.get_logger("gateway.http")


class _HeadersTooLarge(GatewayError):
    status, code, message = 431, "bad_request", "The request header fields are too large."


class _ParseError(BadRequest):
    message = "The request could not be parsed as HTTP/1.1."


def _error_for(status: int) -> GatewayError:
    if status == 431:
        return _HeadersTooLarge()
    if status == 504:
        return GatewayTimeout()
    if 400 <= status < 500:
        error = _ParseError()
        error.status = status
        return error
    return InternalError()


class _EnvelopeRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = new_request_id()
        if isinstance(exc, LineTooLong):
            status = 431
        if status >= 500:
            log.error("http_error", status=status, request_id=request_id, exc_info=exc)
        else:
            # Scanners and broken clients are routine on a public port: one line, no traceback.
            log.info(
                "bad_http_request",
                status=status,
                request_id=request_id,
                client_ip=request.remote,
                reason=type(exc).__name__ if exc else None,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; the connection is closed")
        response = _error_for(status).render(request_id)
        response.force_close()
        return response


class EnvelopeServer(web.Server):
    """web.Server whose connections answer protocol errors with the JSON error envelope."""

    def __call__(self) -> RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        return _EnvelopeRequestHandler(self, loop=self._loop, **kwargs)
