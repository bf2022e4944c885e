"""CA files named in the config (an upstream's, Redis's): read and checked when it is loaded."""

from __future__ import annotations

import ssl

# A CA bundle is a few kilobytes; the bound keeps a wrong path (a device, a log) from being slurped.
_MAX_CA_FILE = 1024 * 1024
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


def read_ca_file(path: str, field: str = "ca_file") -> str:
    """The PEM text of a CA file, checked to hold certificates OpenSSL accepts; errors name
    ``field``."""
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_CA_FILE + 1)
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise ValueError(f"{field}: cannot read {path!r}: {exc}") from None
    if len(data) > _MAX_CA_FILE:
        raise ValueError(f"{field}: {path!r} is larger than 1 MiB; a CA bundle is far smaller")
    text = data.decode("ascii", "replace")
    if _PEM_CERTIFICATE not in text:
        raise ValueError(f"{field}: {path!r} holds no PEM certificate ({_PEM_CERTIFICATE})")
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(
            f"{field}: {path!r} holds a certificate that cannot be read: {exc}"
        ) from None
    return text
