"""How to reach Postgres: the libpq URL with its TLS options, and why a connection failed.

asyncpg honours libpq's URL parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) and the
`PGSSLMODE`/`PGSSLROOTCERT`/`PGPASSWORD` environment. The `PIVOTAL_SYNC_DATABASE_SSL*` and
`PIVOTAL_SYNC_DATABASE_PASSWORD[_FILE]` settings are merged into the URL here, so the daemon
and every tool connect the same way with one `dsn`.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

V = "PIVOTAL_SYNC_DATABASE_"


def with_tls_options(
    url: str,
    *,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
    sslcert: str | None = None,
    sslkey: str | None = None,
    password: SecretStr | None = None,
) -> str:
    """`url` with the given libpq parameters set (overriding the URL's own) and the password."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in (
        ("sslmode", sslmode),
        ("sslrootcert", sslrootcert),
        ("sslcert", sslcert),
        ("sslkey", sslkey),
    ):
        if value is not None:
            query[name] = value
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        user = user.split(":", 1)[0] or "postgres"
        netloc = f"{user}:{quote(password.get_secret_value(), safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/")))


def explain(exc: BaseException) -> str:  # noqa: PLR0911 - one sentence per cause
    """One sentence naming the setting to fix, for the log and for `/readyz`."""
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or "verification failed"
        if "mismatch" in detail.lower():
            return (
                f"the Postgres certificate does not name the host ({detail}): use that host"
                f" name in {V}URL, or sslmode=verify-ca"
            )
        return (
            f"the Postgres certificate is not trusted ({detail}): set {V}SSLROOTCERT"
            " (or sslrootcert in the URL) to the CA that signed it"
        )
    if "rejected SSL upgrade" in text or "does not support SSL" in text:
        return f"Postgres refused TLS: enable ssl on the server, or lower {V}SSLMODE"
    if "client certificate" in text or "no pg_hba.conf entry" in text:
        return (
            f"Postgres refused the connection ({_first_line(text)}): check {V}SSLCERT and"
            f" {V}SSLKEY, and pg_hba.conf"
        )
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"Postgres refused the login: check the user and {V}PASSWORD (or the URL)"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with Postgres failed ({exc.reason}): check {V}SSLMODE"
    if isinstance(exc, OSError | TimeoutError):
        return f"Postgres is unreachable ({type(exc).__name__}): check the host and port in {V}URL"
    return f"Postgres refused the connection ({type(exc).__name__})"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no detail"
