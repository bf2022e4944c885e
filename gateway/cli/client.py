"""The CLI's HTTP client for the admin API: no proxies, no redirects, one line per failure."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 10.0  # seconds of silence before the CLI gives up; the admin API answers in ms
TIMEOUT_ENV = "GATEWAY_ADMIN_TIMEOUT"


class CliError(Exception):
    """Printed as ``error: …`` with exit status 1."""


def parse_timeout(value: str, source: str) -> float:
    """Seconds from ``--timeout`` or ``GATEWAY_ADMIN_TIMEOUT``; a CliError naming the source."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise CliError(f"{source}: must be a number of seconds > 0 (got {value!r})")
    return seconds


class AdminClient:
    """One admin API call per request, on a connection of its own.

    SECURITY: the admin token must reach the admin listener and nothing else, so this client
    is plain http.client: it never reads http_proxy, HTTPS_PROXY, ALL_PROXY or .netrc (a proxy
    in the environment would receive the token, even for 127.0.0.1), and it never follows a
    redirect (the Authorization header would go along to wherever it points).
    """

    def __init__(self, base_url: str, token: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        try:
            parts = urlsplit(self.base_url)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"the admin URL must look like http://127.0.0.1:9090 (got {base_url!r})")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._prefix = parts.path.rstrip("/")

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=self.timeout,
                context=ssl.create_default_context(),
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The ``data`` of the answer, or a CliError that says in one line what went wrong."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        connection = self._connection()
        try:
            connection.request(method, self._prefix + path, body=data, headers=headers)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except Exception as exc:  # every failure is one line, never a traceback
            raise CliError(self._describe(exc)) from None
        finally:
            connection.close()
        return self._data(status, raw)

    def _describe(self, exc: BaseException) -> str:
        where = f"the admin API at {self.base_url}"
        # Order matters: these are all OSErrors, and RemoteDisconnected is a ConnectionResetError.
        if isinstance(exc, TimeoutError):
            return (
                f"no answer from {where} within {self.timeout:g}s"
                f" (--timeout or {TIMEOUT_ENV} to wait longer)"
            )
        if isinstance(exc, ConnectionRefusedError):
            return f"cannot reach {where}: connection refused (is the gateway running?)"
        if isinstance(exc, http.client.RemoteDisconnected):
            return f"cannot reach {where}: the connection was closed before an answer"
        if isinstance(exc, ConnectionError | http.client.IncompleteRead):
            return f"cannot reach {where}: the connection was reset before a complete answer"
        if isinstance(exc, socket.gaierror):
            return f"cannot reach {where}: cannot resolve {self._host!r} ({exc.strerror})"
        if isinstance(exc, ssl.SSLError):
            return f"cannot reach {where}: TLS failed ({exc.reason or exc})"
        if isinstance(exc, http.client.HTTPException):
            return f"cannot reach {where}: the answer is not HTTP ({type(exc).__name__})"
        if isinstance(exc, OSError):
            return f"cannot reach {where}: {exc.strerror or exc}"
        return f"cannot reach {where}: {type(exc).__name__}: {exc}"

    def _data(self, status: int, raw: bytes) -> Any:
        try:
            payload = json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            payload = None
        if 200 <= status < 300 and isinstance(payload, dict) and "data" in payload:
            return payload["data"]
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and "code" in error and "message" in error:
            message = f"{error['code']}: {error['message']}"
        else:
            what = "a redirect (not followed)" if 300 <= status < 400 else "not an admin API answer"
            message = (
                f"HTTP {status} from {self.base_url}: {what}; is this the gateway's admin listener?"
            )
        raise CliError(" ".join(str(message).split()))  # one line, whatever the server sent
