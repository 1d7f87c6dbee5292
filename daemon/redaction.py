"""Secrets out of everything the daemon writes down: one `redact` for logs, tables and tools.

A secret reaches text by accident, never on purpose: a gateway echoes the request's
`Authorization` header in its error page, an exception message quotes a DSN, a library logs a
URL. So every place that stores or prints text from outside goes through `redact` — the log
processors (daemon/logs.py), the dead-letter columns (daemon/checkpoints.py) and the
operator tools' output — and the secrets it knows are registered once at start-up from the
settings: the API key and the Postgres password. Credentials after `Bearer`/`Basic` are
scrubbed even when nobody registered them (a tool process, another replica's key).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

REDACTED = "[redacted]"
# Shorter strings are not secrets worth the false positives (a 3-character password would turn
# every "abc" in a log into "[redacted]"); no real key or password is this short.
MIN_SECRET_CHARS = 6
# An HTTP credential in any echo of a header: `Authorization: Bearer <token>`.
_CREDENTIAL = re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_CREDENTIAL_REDACTED = rf"\1\2{REDACTED}"
# Module state, like the logging configuration it serves: registered once, read everywhere.
# Longest first: a secret that contains another must go whole, not leave a tail behind. Sorted
# when one is registered, not on each of the many strings `redact` sees.
_longest_first: list[str] = []


def register_secret(value: str | None) -> None:
    """Scrub `value` (and its URL-encoded form) from everything `redact` sees from now on."""
    if value and len(value) >= MIN_SECRET_CHARS:
        known = {*_longest_first, value, quote(value, safe="")}
        _longest_first[:] = sorted(known, key=len, reverse=True)


def register_dsn_password(dsn: str | None) -> None:
    """Register the password of a libpq URL (`postgresql://user:password@host/db`)."""
    if not dsn:
        return
    try:
        password = urlsplit(dsn).password
    except ValueError:
        return
    if password:
        register_secret(unquote(password))


# Every setting that holds a secret (daemon/config.py), as pydantic SecretStr.
SECRET_SETTINGS = (
    "api_key",
    "kafka_sasl_password",
    "kafka_ssl_key_password",
    "kafka_oauth_client_secret",
    "database_password",
)


def register_settings(settings: Any) -> None:
    """Register every secret of `settings`, and the password inside the database URL."""
    for name in SECRET_SETTINGS:
        secret = getattr(settings, name, None)
        if secret is not None:
            register_secret(secret.get_secret_value())
    register_dsn_password(getattr(settings, "database_url", None))


def registered() -> Iterable[str]:
    """The registered secrets (for tests that scan output for them)."""
    return frozenset(_longest_first)


def forget_all() -> None:
    """Unregister every secret (tests only)."""
    _longest_first.clear()


def redact(text: str) -> str:
    """`text` with every registered secret and every HTTP credential replaced by REDACTED."""
    for secret in _longest_first:
        if secret in text:
            text = text.replace(secret, REDACTED)
    # Searched first: nearly no string holds a credential, and `sub` with a template calls
    # into Python (re._subx) on every call, which cost more than the rest of a line's redaction.
    if _CREDENTIAL.search(text) is None:
        return text
    return _CREDENTIAL.sub(_CREDENTIAL_REDACTED, text)


def redact_optional(text: str | None) -> str | None:
    return None if text is None else redact(text)


def redact_any(value: Any) -> Any:
    """`redact` applied to every string inside `value` (dicts, lists, tuples, exceptions)."""
    try:
        return _redact_any(value)
    except RecursionError:
        # Never crash the caller (a log line, a tool's output) over something nested absurdly.
        return "[not shown: nested too deep]"


def _redact_any(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_any(v) for v in value)
    if isinstance(value, BaseException):
        return redact(repr(value))
    return value
