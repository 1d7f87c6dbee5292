"""TLS contexts for the daemon's outbound connections, built once from settings.

- Kafka: trusts only `PIVOTAL_SYNC_KAFKA_SSL_CA_FILE` when given (like a Java truststore),
  otherwise the system/certifi roots; an optional client certificate for mTLS, its key
  optionally encrypted; hostname verification on unless explicitly turned off.
- Pivotal API and the OAuth token endpoint: the certifi roots *plus* an extra CA bundle
  (a corporate CA in front of egress), verification always on.

A file that cannot be read or a key whose password is wrong is a `ConfigError` naming the
variable, raised at start-up (exit 2), never a retry loop.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi

from daemon.errors import ConfigError

PREFIX = "PIVOTAL_SYNC_"


def client_context(
    *,
    ca_file: Path | None,
    ca_variable: str,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    key_password: str | None = None,
    check_hostname: bool = True,
    replace_roots: bool = True,
    prefix: str = PREFIX + "KAFKA_SSL_",
) -> ssl.SSLContext:
    """A verifying client context. `replace_roots`: the CA file replaces the default roots."""
    context = ssl.create_default_context(cafile=None if ca_file else certifi.where())
    if not replace_roots and ca_file is not None:
        context.load_verify_locations(cafile=certifi.where())
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                ca_variable, f"cannot load a CA bundle from it: {_why(exc)}"
            ) from None
    if cert_file is not None:
        _load_client_certificate(context, cert_file, key_file, key_password, prefix)
    # Verification is never turned off; only the name check may be, for brokers whose
    # certificates do not name the advertised host (some self-managed clusters).
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_client_certificate(
    context: ssl.SSLContext,
    cert_file: Path,
    key_file: Path | None,
    key_password: str | None,
    prefix: str,
) -> None:
    for variable, path in ((f"{prefix}CERT_FILE", cert_file), (f"{prefix}KEY_FILE", key_file)):
        if path is not None and not path.is_file():
            raise ConfigError(variable, "no such file")
    try:
        # An encrypted key without a password would make OpenSSL prompt on the terminal.
        context.load_cert_chain(
            str(cert_file), str(key_file) if key_file else None, password=key_password or ""
        )
    except ssl.SSLError as exc:
        if key_password is not None or _encrypted(key_file or cert_file):
            raise ConfigError(
                f"{prefix}KEY_PASSWORD", "does not decrypt the private key (or is missing)"
            ) from None
        raise ConfigError(
            f"{prefix}CERT_FILE", f"the certificate and key do not load: {_why(exc)}"
        ) from None


def _encrypted(key_file: Path) -> bool:
    try:
        return b"ENCRYPTED" in key_file.read_bytes()
    except OSError:
        return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return getattr(exc, "reason", None) or type(exc).__name__
