"""structlog set-up: JSON lines through orjson, written in buffered batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import IO, Any

import orjson
import structlog

from gateway.config import LogConfig
from gateway.http.request_id import current_request_id

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class BufferedWriter:
    """Collects log lines and writes them in batches: one write per tick, not one per request.

    Lines are flushed when the buffer passes ``max_buffer`` bytes, every ``interval`` seconds
    while a loop runs, and on ``flush()`` (called at shutdown), so nothing is lost on SIGTERM.
    """

    def __init__(
        self, stream: IO[bytes], *, max_buffer: int = 64 * 1024, interval: float = 0.1
    ) -> None:
        self._stream = stream
        self._parts: list[bytes] = []
        self._size = 0
        self._max_buffer = max_buffer
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None

    def write(self, line: bytes) -> None:
        self._parts.append(line)
        self._size += len(line)
        if self._size >= self._max_buffer:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no loop (CLI, start-up): write at once
                return
            self._timer = loop.call_later(self._interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            # A closed stdout (a pipe that went away) must never fail a request.
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(data)
                self._stream.flush()


class _Logger:
    """The structlog 'logger' at the end of the chain: takes a rendered line, writes it."""

    def __init__(self, writer: BufferedWriter) -> None:
        self._writer = writer

    def msg(self, message: bytes | str) -> None:
        if isinstance(message, str):
            message = message.encode("utf-8", "replace")
        self._writer.write(message + b"\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LoggerFactory:
    def __init__(self, writer: BufferedWriter) -> None:
        self._logger = _Logger(writer)

    def __call__(self, *args: Any) -> _Logger:
        return self._logger


_writer: BufferedWriter | None = None


def configure_logging(config: LogConfig, stream: IO[bytes] | None = None) -> BufferedWriter:
    """Set up structlog (and route the standard library's records through it)."""
    global _writer
    if _writer is not None:
        _writer.flush()
    writer = BufferedWriter(stream if stream is not None else sys.stdout.buffer)
    _writer = writer
    renderer: Any
    if config.format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=_LoggerFactory(writer),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio log through the standard library: same stream, same format.
    handler = logging.StreamHandler(_TextAdapter(writer))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer()
                if config.format == "json"
                else structlog.dev.ConsoleRenderer(colors=False),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[config.level], logging.INFO))
    return writer


def _add_request_id(_: object, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Every line written while a request is handled names it (one context variable, set once
    per request: structlog's own contextvars cost more on the hot path)."""
    request_id = current_request_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


class AccessLog:
    """The per-request line, rendered straight to JSON: the hot path skips structlog's chain.

    Other events keep the full structlog pipeline; the output format of both is the same.
    """

    __slots__ = ("_second", "_stamp", "_writer")

    def __init__(self, writer: BufferedWriter) -> None:
        self._writer = writer
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting the date once a second, not once a request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1_000_000):06d}Z"

    def write(self, fields: dict[str, object]) -> None:
        fields["event"] = "request"
        fields["level"] = "info"
        fields["time"] = self._now()
        self._writer.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))


def access_log(config: LogConfig) -> AccessLog | None:
    """The fast JSON access log, or None where the structlog path serves (console, or off)."""
    if not config.access_log or _LEVELS[config.level] > logging.INFO:
        return None
    if config.format != "json" or _writer is None:
        return None
    return AccessLog(_writer)


def flush_logs() -> None:
    if _writer is not None:
        _writer.flush()


class _TextAdapter:
    """A text stream for logging.StreamHandler that feeds the shared buffered writer."""

    def __init__(self, writer: BufferedWriter) -> None:
        self._writer = writer

    def write(self, text: str) -> int:
        self._writer.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        """Flushing is the writer's job (per tick and at shutdown)."""
