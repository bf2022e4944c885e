"""How the process listens, keeps its state, logs and reloads: listen, admin, store, server, log,
reload."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from gateway.config.section import Section
from gateway.config.tls import read_ca_file
from gateway.config.types import DAY, MIB, DurationRange, Interval, SizeRange, Timeout
from gateway.config.validation import redact_url, shown


class ListenConfig(Section):
    host: str = Field("0.0.0.0", description="Address the data listener binds.")  # noqa: S104 - a gateway serves the network by design
    port: int = Field(8080, ge=0, le=65535, description="Port of the data listener.")


# An admin token's name: the actor the audit log shows for what was done with it.
_TOKEN_NAME = re.compile(r"[a-z0-9._-]{1,32}")
# Actors the gateway itself writes to the audit log: admin.token's, and reloads nobody asked for.
RESERVED_ACTORS = ("admin", "sighup", "file-watch")
_MAX_TOKEN = 256  # the longest bearer token the admin listener reads


class AdminTokenConfig(Section):
    name: str = Field(
        description="Who holds the token (1-32 of a-z 0-9 . _ -): the actor in the audit log.",
        json_schema_extra={"pattern": f"^{_TOKEN_NAME.pattern}$"},
    )
    token: str = Field(
        description="The bearer token, 16 to 256 printable characters; use ${ENV}.",
        json_schema_extra={"minLength": 16, "maxLength": _MAX_TOKEN},
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOKEN_NAME.fullmatch(value):
            raise ValueError(f"must be 1-32 of a-z, 0-9, '.', '_', '-' (got {shown(value)})")
        if value in RESERVED_ACTORS:
            raise ValueError(
                f"{value!r} is reserved (the gateway's own actors: admin, sighup, file-watch)"
            )
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        # SECURITY: the value is never quoted back: it is a secret, or meant to be one.
        if len(value) < 16:
            raise ValueError("must be at least 16 characters")
        if len(value) > _MAX_TOKEN:
            raise ValueError(f"must be at most {_MAX_TOKEN} characters")
        if not (value.isascii() and value.isprintable()) or " " in value:
            raise ValueError("must be printable ASCII without spaces")
        return value


class AdminConfig(Section):
    host: str = Field("127.0.0.1", description="Address of the admin listener (keep it private).")
    port: int = Field(9090, ge=0, le=65535, description="Port of the admin listener.")
    token: str | None = Field(
        None,
        description="Bearer token for /admin/* and the console, acting as 'admin' in the audit"
        " log; use ${GATEWAY_ADMIN_TOKEN}.",
    )
    tokens: tuple[AdminTokenConfig, ...] = Field(
        (),
        description="Named admin tokens, [{name, token}]: each works like token, and the audit"
        " log names who acted. With tokens and no token, no token is made or read from"
        " token_file.",
    )
    token_file: str = Field(
        ".gateway/admin-token",
        description="Without token or tokens: the token is read from here, or made and saved"
        " here (0600).",
    )

    @field_validator("token")
    @classmethod
    def _token_strong_enough(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value or None

    @model_validator(mode="after")
    def _tokens_distinct(self) -> AdminConfig:
        names: dict[str, int] = {}
        tokens: dict[str, str] = {} if self.token is None else {self.token: "token"}
        for index, entry in enumerate(self.tokens):
            if entry.name in names:
                raise ValueError(
                    f"tokens: the name {entry.name!r} is given twice"
                    f" (tokens[{names[entry.name]}] and tokens[{index}])"
                )
            names[entry.name] = index
            if entry.token in tokens:
                # SECURITY: the places are named, never the token.
                raise ValueError(
                    f"tokens: tokens[{index}].token is the same as {tokens[entry.token]}:"
                    " each holder needs a token of their own"
                )
            tokens[entry.token] = f"tokens[{index}].token"
        return self


_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def _check_redis_url(url: str, *, cluster: bool) -> None:
    """What the client library would take silently or fail on only at start."""
    parsed = urlsplit(url)
    if parsed.scheme.lower() == "unix":
        return
    try:
        parsed.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise ValueError(f"url: the port of {shown(redact_url(url))} is not a port") from None
    if not parsed.hostname:
        raise ValueError(f"url: {shown(redact_url(url))} names no host")
    options = parse_qs(parsed.query)
    # SECURITY: URL options override the client's settings; none may turn verification off.
    if any(name.lower().startswith("ssl") for name in options):
        raise ValueError(
            "url: TLS options are not taken from the url: the server's certificate and name are"
            " always verified (tls_ca_file names the CAs)"
        )
    if cluster and options:
        raise ValueError("url: a cluster node's url takes no options (?...)")
    if cluster and parsed.path not in ("", "/", "/0"):
        raise ValueError("url: a Redis Cluster has one database, 0")


class StoreConfig(Section):
    backend: Literal["local", "redis"] = Field(
        "local", description="local (SQLite, one instance) or redis."
    )
    path: str = Field(".gateway/state.db", description="SQLite file of the local store.")
    url: str | None = Field(
        None,
        description="redis://host:port/db for the redis store; with cluster, one node of it.",
    )
    cluster: bool = Field(
        False,
        description="The Redis is a Redis Cluster: url (or urls) names nodes to start from,"
        " and the gateway follows its slots, resharding and failovers.",
    )
    urls: tuple[str, ...] = Field(
        (), description="Several nodes of a Redis Cluster to start from, instead of url."
    )
    key_prefix: str = Field(
        "gw", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Namespace of our keys in Redis."
    )
    username: str | None = Field(
        None, description="Redis ACL user (with password); the default user without it."
    )
    password: str | None = Field(
        None,
        description="Redis password (of the ACL user, if any); use ${REDIS_PASSWORD} to keep it"
        " out of the file.",
    )
    tls_ca_file: str | None = Field(
        None,
        description="PEM file of the CAs that sign the Redis server's certificate, trusted"
        " instead of the system's (rediss:// URLs only).",
    )
    replica_acks: int = Field(
        0,
        ge=0,
        le=5,
        description="How many replicas must confirm a write the gateway acknowledges (an org,"
        " a key created or revoked, a webhook endpoint or event) before it answers; fewer in"
        " replica_ack_timeout and it answers 503. 0: answer once the master has it.",
    )
    replica_ack_timeout: Annotated[float, DurationRange(least=0.01, most=10.0)] = Field(
        0.5, description="How long a write waits for replica_acks replicas; 10ms to 10s."
    )
    # The PEM text as it was checked: the store trusts exactly what the check accepted.
    _ca_pem: str | None = PrivateAttr(None)

    @property
    def ca_pem(self) -> str | None:
        return self._ca_pem

    @property
    def redis_urls(self) -> tuple[str, ...]:
        """The Redis (or the cluster nodes) to connect to."""
        return self.urls or ((self.url,) if self.url else ())

    @model_validator(mode="after")
    def _redis_settings_agree(self) -> StoreConfig:
        if self.backend != "redis":
            if self.cluster or self.urls:
                raise ValueError("cluster: only with backend: redis")
            if self.replica_acks:
                raise ValueError("replica_acks: only with backend: redis")
            return self
        if self.urls and not self.cluster:
            raise ValueError("urls: only with cluster: true (one Redis has one url)")
        if self.urls and self.url:
            raise ValueError("url: give url or urls, not both")
        urls = self.urls or ((self.url,) if self.url else ())
        if not urls:
            raise ValueError("url: required when backend is redis")
        schemes = {url.partition("://")[0].lower() for url in urls}
        for scheme in schemes:
            if scheme not in _REDIS_SCHEMES:
                raise ValueError(
                    f"url: must start with redis://, rediss:// (TLS) or unix:// (got {scheme!r})"
                )
        if len(schemes) > 1:
            raise ValueError("urls: all redis:// or all rediss://, not a mix")
        scheme = schemes.pop()
        if self.cluster and scheme == "unix":
            raise ValueError("url: a cluster's nodes are host:port, not unix sockets")
        for url in urls:
            _check_redis_url(url, cluster=self.cluster)
        if self.username and not self.password:
            raise ValueError("username: needs password (an ACL user logs in with both)")
        if self.tls_ca_file is not None:
            if scheme != "rediss":
                raise ValueError("tls_ca_file: only with a rediss:// url (TLS)")
            self._ca_pem = read_ca_file(self.tls_ca_file, "tls_ca_file")
        return self


class ServerConfig(Section):
    idle_timeout: Timeout = Field(
        75.0,
        description="How long a connection may wait idle for its next request before it is closed.",
    )
    # SECURITY: bounded, so a slow-header client can never hold a socket for long.
    header_timeout: Annotated[float, DurationRange(least=1.0, most=600.0)] = Field(
        10.0,
        description=(
            "Deadline for a complete request head, from its first byte (the accept, for a"
            " connection's first request); 408 and close when it passes; 1s to 10m."
        ),
    )
    body_timeout: Timeout = Field(
        30.0,
        description="Longest wait for the next piece of a request body before giving up;"
        " at most 1d.",
    )
    drain_timeout: Annotated[float, DurationRange(most=DAY)] = Field(
        30.0, description="On SIGTERM, how long in-flight requests may take to finish; at most 1d."
    )
    max_header_size: Annotated[int, SizeRange(least=256, most=MIB)] = Field(
        8190, description="Longest request line or header field; 256b to 1MiB."
    )
    max_headers: int = Field(100, ge=1, le=1000, description="Most header fields in one request.")


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )
    format: Literal["json", "console"] = Field(
        "json", description="json for machines, console for people."
    )
    access_log: bool = Field(True, description="One line per request on stdout.")


class ReloadConfig(Section):
    watch: bool = Field(False, description="Reload when the config file changes (polling).")
    interval: Interval = Field(
        1.0, description="How often the file is checked when watched; 10ms to 1d."
    )
