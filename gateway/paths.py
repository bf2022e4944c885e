"""One canonical request path: refuse ambiguous targets, compile route templates."""

from __future__ import annotations

import re

from gateway.errors import BadRequest

# A template parameter: {name} (one segment) or {name:regex}.
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:[^{}]|\{[^{}]*\})+))?\}")
# SECURITY: encoded '/', '\' and NUL, at any depth of %25-re-encoding, would let a backend that
# decodes see a different path than the one we routed on.
_ENCODED_SEPARATOR = re.compile(r"%(?:25)*(?:2f|5c|00)", re.IGNORECASE)
_ENCODED_DOT = re.compile(r"%(?:25)*2e", re.IGNORECASE)
_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def compile_template(template: str) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """A route template as (regex, parameter names); regex is None for a literal path.

    Raises ValueError naming what is wrong, for config validation.
    """
    if not template.startswith("/"):
        raise ValueError(f"must start with '/' (got {template!r})")
    if "?" in template or "#" in template:
        raise ValueError(f"must not contain '?' or '#' (got {template!r})")
    if "{" not in template:
        if "}" in template:
            raise ValueError(f"unbalanced '}}' in {template!r}")
        _refuse_ambiguous(template, error=ValueError)
        return None, ()
    pattern: list[str] = []
    names: list[str] = []
    pos = 0
    for m in _PARAM.finditer(template):
        literal = template[pos : m.start()]
        if "{" in literal or "}" in literal:
            raise ValueError(f"bad parameter syntax in {template!r}")
        pattern.append(re.escape(literal))
        name, regex = m.group(1), m.group(2)
        if name in names:
            raise ValueError(f"parameter {{{name}}} appears twice in {template!r}")
        names.append(name)
        if regex is None:
            pattern.append(f"(?P<{name}>[^/]+)")
        else:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"bad regex for {{{name}}} in {template!r}: {exc}") from None
            pattern.append(f"(?P<{name}>{regex})")
        pos = m.end()
    tail = template[pos:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"bad parameter syntax in {template!r}")
    pattern.append(re.escape(tail))
    return re.compile("".join(pattern) + r"\Z"), tuple(names)


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target, exactly as the client sent them.

    SECURITY: the authority of an absolute-form target (``GET http://other/x``) is dropped here:
    routing uses the Host header only, never a name the client slipped into the request line.
    """
    if not target.startswith("/"):
        m = _ABSOLUTE_FORM.match(target)
        if m is None:
            raise BadRequest("The request target must be an absolute path.")
        target = target[m.end() :] or "/"
        if not target.startswith("/"):
            target = "/" + target
    if "#" in target:
        raise BadRequest("The request target must not contain a fragment.")
    path, _, query = target.partition("?")
    check_path(path)
    return path, query


def check_path(path: str) -> None:
    """Refuse a path that a backend could read as a different path than the one we matched."""
    _refuse_ambiguous(path, error=BadRequest)


def _refuse_ambiguous(path: str, *, error: type[Exception]) -> None:
    # Fast path: nothing to look at in the common case.
    if "%" not in path and "\\" not in path and "/." not in path and "\x00" not in path:
        return
    if "\\" in path or "\x00" in path:
        raise error("The path must not contain a backslash or NUL.")
    if "%" in path and _ENCODED_SEPARATOR.search(path):
        raise error("The path must not contain an encoded '/', '\\' or NUL.")
    for segment in path.split("/"):
        # SECURITY: ';' ends the segment for servlet containers ("..;/" is "..").
        bare = segment.split(";", 1)[0]
        if "%" in bare:
            bare = _ENCODED_DOT.sub(".", bare)
        if bare in (".", ".."):
            raise error("The path must not contain '.' or '..' segments.")
