"""One canonical request path: refuse ambiguous targets, compile route templates."""

from __future__ import annotations

import re
from urllib.parse import unquote

from gateway.errors import BadRequest

# A template parameter: {name} (one segment) or {name:regex}.
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:[^{}]|\{[^{}]*\})+))?\}")
# Characters or escapes that may make two spellings of one path; absent in nearly every request.
_SUSPECT = re.compile(r"[%;\\\x00]|//|/\.\.?(?:/|$)")
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_LOWER_CASE_ESCAPE = re.compile(r"%(?:[0-9A-F][a-f]|[a-f][0-9A-Fa-f])")
_UNLESS_UPPER_CASE_ESCAPE = re.compile(r"%(?![0-9A-F]{2})")  # malformed or lower case
# Escapes of unreserved characters (RFC 3986: A-Z a-z 0-9 - . _ ~), which backends decode,
# and of '/', '\' and NUL, which change the path's structure; or (group 2) overlong UTF-8
# (a lead byte C0/C1, or E0, F0, F8, FC with too small a value): no encoder makes it, but a
# lenient decoder turns %C0%AE into '.', %C0%AF into '/' and %C0%80 into NUL.
_NEEDLESS_ESCAPE = re.compile(
    r"%(3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]|2[D-Fd-f]|5[CcFf]|7[Ee]|00)"
    r"|(?i:%(C[01]%[89AB]|E0%[89]|F0%8|F8%8[0-7]|FC%8[0-3]))"
)
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
        if _canonical(template, ValueError) != template:
            raise ValueError(f"write percent-escapes in upper case, like %C3 (got {template!r})")
        return None, ()
    pattern: list[str] = []
    names: list[str] = []
    pos = 0
    for m in _PARAM.finditer(template):
        literal = template[pos : m.start()]
        if "{" in literal or "}" in literal:
            raise ValueError(f"bad parameter syntax in {template!r}")
        _check_template_escapes(literal, template)
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
            except (re.error, RecursionError, OverflowError) as exc:  # too deep or too large too
                raise ValueError(f"bad regex for {{{name}}} in {template!r}: {exc}") from None
            pattern.append(f"(?P<{name}>{regex})")
        pos = m.end()
    tail = template[pos:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"bad parameter syntax in {template!r}")
    _check_template_escapes(tail, template)
    pattern.append(re.escape(tail))
    try:
        return re.compile("".join(pattern) + r"\Z"), tuple(names)
    except re.error as exc:  # a regex that is fine alone but not in place, e.g. with \1
        raise ValueError(f"bad regex in {template!r}: {exc}") from None


def literal_path(value: str | None, example: str) -> str | None:
    """A config path the gateway answers at itself (an API of its own): one literal path."""
    if value is None:
        return None
    regex, _ = compile_template(value)
    if regex is not None or not value.startswith("/") or value.endswith("/"):
        raise ValueError(f"must be a literal path like {example} (got {value!r})")
    return value


def _check_template_escapes(literal: str, template: str) -> None:
    """The literal text of a template must be written as requests are matched, or never match."""
    if "%" not in literal:
        return
    if _MALFORMED_ESCAPE.search(literal):
        raise ValueError(f"a '%' that does not start a %XX escape in {template!r}")
    _refuse_needless_escapes(literal, ValueError)
    if _LOWER_CASE_ESCAPE.search(literal):
        raise ValueError(f"write percent-escapes in upper case, like %C3 (got {template!r})")


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target: the path in its one canonical spelling (see
    canonical_path), the query exactly as the client sent it.

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
    return canonical_path(path), query


def canonical_path(path: str) -> str:
    """The path as sent, with any percent-escape in upper case (``%c3`` is ``%C3`` to every
    decoder); BadRequest for a path that a backend could read as a different path."""
    return _canonical(path, BadRequest)


def check_path(path: str) -> None:
    """Refuse a path that a backend could read as a different path than the one we matched."""
    _canonical(path, BadRequest)


def _canonical(path: str, error: type[Exception]) -> str:
    """SECURITY: refuse every spelling a backend could normalise into another path.

    Backends decode %XX, merge '//', drop ';params' (servlet containers) and resolve dot
    segments; if they see another path than the one we routed on, a route's scopes can be
    skipped. So anything that such normalisation would change is refused instead. The one
    spelling changed rather than refused is the case of hex digits, which no decoder tells
    apart and some clients write in lower case: routes are matched on the upper-case form.
    """
    # Fast path: nothing to look at in the common case.
    if not _SUSPECT.search(path):
        return path
    if "\\" in path or "\x00" in path:
        raise error("The path must not contain a backslash or NUL.")
    if ";" in path:
        raise error("The path must not contain ';'.")
    if "//" in path:
        raise error("The path must not contain empty segments ('//').")
    if "%" in path:
        if _UNLESS_UPPER_CASE_ESCAPE.search(path):  # one scan when every escape is upper case
            if _MALFORMED_ESCAPE.search(path):
                raise error("The path has a '%' that does not start a %XX escape.")
            path = _ESCAPE.sub(_upper, path)
        _refuse_needless_escapes(path, error)
        # A backend that decodes twice: the once-decoded path must not hide an escape either.
        decoded = unquote(path)
        if "%" in decoded:
            _refuse_needless_escapes(decoded, error)
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise error("The path must not contain '.' or '..' segments.")
    return path


def _upper(m: re.Match[str]) -> str:
    return m.group(0).upper()


def _refuse_needless_escapes(path: str, error: type[Exception]) -> None:
    m = _NEEDLESS_ESCAPE.search(path)
    if m is None:
        return
    if m.group(2):
        raise error("The path must not contain overlong UTF-8 (like %C0%AE for '.').")
    char = bytes.fromhex(m.group(1)).decode("latin-1")
    if char in "/\\\x00":
        raise error("The path must not contain an encoded '/', '\\' or NUL.")
    if char == ".":
        raise error("The path must not contain '.' or '..' segments, encoded or not.")
    raise error(f"The path must not percent-encode {char!r}, which needs no encoding.")
