"""Every Kafka client of pivotal-sync, built from one place: bootstrap servers, TLS and SASL.

The daemon's consumer, the dead-letter producer and the operator tools all take their clients
from `KafkaClients`, so a cluster that needs SASL_SSL with SCRAM (or mTLS, or OAUTHBEARER)
is configured once, by the `PIVOTAL_SYNC_KAFKA_*` variables, for all of them.

aiokafka reports every failed bootstrap as "Unable to bootstrap", whatever the cause.
`diagnose()` opens one connection itself with the same settings and turns the real cause
(an untrusted certificate, a refused password, a mechanism the broker does not enable, a TLS
mismatch) into one sentence naming the setting to fix, for the log and for `/readyz`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from daemon import tls
from daemon.config import KafkaSaslMechanism, KafkaSecurityProtocol, Settings, load_settings
from daemon.errors import ConfigError
from daemon.kafka_oauth import (
    ClientCredentialsTokenProvider,
    MskIamTokenProvider,
    TokenUnavailable,
    msk_region,
)

DIAGNOSE_TIMEOUT_SECONDS = 10.0
V = "PIVOTAL_SYNC_KAFKA_"
# OpenSSL reasons that mean "the server wanted a client certificate we did not send".
CLIENT_CERTIFICATE_ALERTS = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "BAD_CERTIFICATE")
CLIENT_CERTIFICATE_REFUSED = ("UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR")
NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")


class KafkaClients:
    """How this process reaches the cluster; makes consumers, producers and admin clients."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        protocol = settings.kafka_security_protocol
        self.protocol = protocol
        self.mechanism = settings.kafka_sasl_mechanism
        self.bootstrap_servers = settings.kafka_bootstrap_servers
        self._ssl: ssl.SSLContext | None = None
        if protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL):
            key_password = settings.kafka_ssl_key_password
            self._ssl = tls.client_context(
                ca_file=settings.kafka_ssl_ca_file,
                ca_variable=f"{V}SSL_CA_FILE",
                cert_file=settings.kafka_ssl_cert_file,
                key_file=settings.kafka_ssl_key_file,
                key_password=key_password.get_secret_value() if key_password else None,
                check_hostname=settings.kafka_ssl_check_hostname,
            )
        # One provider per process: every connection shares its cached token.
        self.token_provider = self._token_provider(settings)

    @classmethod
    def plaintext(cls, bootstrap_servers: str) -> KafkaClients:
        """Clients for an unsecured broker (local stand-ins, development tools)."""
        return cls(load_settings({"PIVOTAL_SYNC_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers}))

    def __repr__(self) -> str:
        return (
            f"KafkaClients(bootstrap_servers={self.bootstrap_servers!r}, "
            f"protocol={self.protocol.value}, mechanism={self.mechanism})"
        )

    def _token_provider(self, settings: Settings) -> AbstractTokenProvider | None:
        if self.mechanism is KafkaSaslMechanism.AWS_MSK_IAM:
            region = msk_region(settings.kafka_bootstrap_servers)
            if region is None:
                raise ConfigError(
                    f"{V}BOOTSTRAP_SERVERS", "not an MSK address and AWS_REGION is not set"
                )
            return MskIamTokenProvider(region)
        if self.mechanism is not KafkaSaslMechanism.OAUTHBEARER:
            return None
        # Settings.check_connections made sure of these.
        assert settings.kafka_oauth_token_url
        assert settings.kafka_oauth_client_id
        assert settings.kafka_oauth_client_secret is not None
        return ClientCredentialsTokenProvider(
            token_url=settings.kafka_oauth_token_url,
            client_id=settings.kafka_oauth_client_id,
            client_secret=settings.kafka_oauth_client_secret,
            scope=settings.kafka_oauth_scope,
            # An identity provider inside the cluster often shares the broker's private CA.
            ssl_context=tls.client_context(
                ca_file=settings.kafka_ssl_ca_file,
                ca_variable=f"{V}SSL_CA_FILE",
                replace_roots=False,
            ),
        )

    # -- the clients --------------------------------------------------------------------------
    def security(self) -> dict[str, Any]:
        """The security keyword arguments shared by clients and `aiokafka.conn.create_conn`."""
        s = self._settings
        kwargs: dict[str, Any] = {"security_protocol": self.protocol.value}
        if self._ssl is not None:
            kwargs["ssl_context"] = self._ssl
        if self.mechanism is None:
            return kwargs
        if self.token_provider is not None:
            # MSK IAM is OAUTHBEARER on the wire, with a SigV4-signed token.
            kwargs["sasl_mechanism"] = "OAUTHBEARER"
            kwargs["sasl_oauth_token_provider"] = self.token_provider
        else:
            assert s.kafka_sasl_password is not None
            kwargs["sasl_mechanism"] = self.mechanism.value
            kwargs["sasl_plain_username"] = s.kafka_sasl_username
            kwargs["sasl_plain_password"] = s.kafka_sasl_password.get_secret_value()
        return kwargs

    def kwargs(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, **self.security()}

    def consumer(self, *topics: str, **options: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(*topics, **self.kwargs(), **options)

    def producer(self, **options: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self.kwargs(), **options)

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self.kwargs(), **options)

    # -- explaining failures ------------------------------------------------------------------
    async def diagnose(self) -> str:
        """Why a client cannot connect, naming the setting to fix ("" if a connection works)."""
        host, port = _first_server(self.bootstrap_servers)
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id="pivotal-sync-diagnose",
                    request_timeout_ms=int(DIAGNOSE_TIMEOUT_SECONDS * 1000),
                    **self.security(),
                ),
                DIAGNOSE_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            return self.explain(exc, f"{host}:{port}")
        conn.close()
        return ""

    def explain(self, exc: BaseException, address: str) -> str:  # noqa: PLR0911 - a table
        """One sentence for a failed connection to `address`."""
        if isinstance(exc, TokenUnavailable):
            return str(exc.args[0] if exc.args else exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return _untrusted(exc, address)
        if isinstance(exc, ssl.SSLError):
            return _tls_refused(exc, address)
        if isinstance(exc, UnsupportedSaslMechanismError):
            return (
                f"the broker at {address} does not enable SASL mechanism {self._wire_mechanism()}"
                f"{_enabled(exc)}: check {V}SASL_MECHANISM"
            )
        if isinstance(exc, SaslAuthenticationFailed | IllegalSaslStateError):
            return self._refused_credentials(address)
        if isinstance(exc, KafkaConnectionError | ConnectionError | asyncio.IncompleteReadError):
            return self._closed(address)
        if isinstance(exc, TimeoutError):
            return (
                f"no answer from the broker at {address} within {DIAGNOSE_TIMEOUT_SECONDS:.0f} s:"
                f" check {V}BOOTSTRAP_SERVERS and {V}SECURITY_PROTOCOL"
            )
        if isinstance(exc, OSError):
            return (
                f"cannot connect to {address} ({exc.strerror or type(exc).__name__}):"
                f" check {V}BOOTSTRAP_SERVERS"
            )
        if isinstance(exc, KafkaError):
            return f"the broker at {address} refused the connection ({type(exc).__name__})"
        return f"connecting to {address} failed ({type(exc).__name__})"

    def _wire_mechanism(self) -> str:
        return "OAUTHBEARER" if self.token_provider is not None else str(self.mechanism)

    def _refused_credentials(self, address: str) -> str:
        if self.mechanism is KafkaSaslMechanism.OAUTHBEARER:
            fix = f"{V}OAUTH_CLIENT_ID and {V}OAUTH_SCOPE (the broker must accept its tokens)"
        elif self.mechanism is KafkaSaslMechanism.AWS_MSK_IAM:
            fix = "the pod's IAM role and its kafka-cluster:Connect permission"
        else:
            fix = f"{V}SASL_USERNAME and {V}SASL_PASSWORD"
        return f"the broker at {address} refused the {self.mechanism} login: check {fix}"

    def _closed(self, address: str) -> str:
        if self.protocol in (KafkaSecurityProtocol.PLAINTEXT, KafkaSecurityProtocol.SASL_PLAINTEXT):
            return (
                f"the broker at {address} closed the connection during the first request:"
                f" if its listener uses TLS, set {V}SECURITY_PROTOCOL to SSL or SASL_SSL"
            )
        if (
            self.protocol is KafkaSecurityProtocol.SSL
            and self._settings.kafka_ssl_cert_file is None
        ):
            # TLS 1.3 servers refuse a missing client certificate after the handshake, so it
            # shows as a connection closed during the first request, not as a TLS alert.
            return (
                f"the broker at {address} closed the connection after the TLS handshake: it"
                f" probably requires a client certificate (set {V}SSL_CERT_FILE and"
                f" {V}SSL_KEY_FILE) or a SASL login ({V}SECURITY_PROTOCOL=SASL_SSL)"
            )
        return (
            f"the broker at {address} closed the connection during the first request: check"
            f" {V}SECURITY_PROTOCOL and {V}SASL_MECHANISM against the listener"
        )


def _untrusted(exc: ssl.SSLCertVerificationError, address: str) -> str:
    detail = exc.verify_message or exc.reason or "verification failed"
    if "mismatch" in detail.lower():
        return (
            f"the broker certificate at {address} does not name that host ({detail}): use the"
            f" advertised host names in {V}BOOTSTRAP_SERVERS (or {V}SSL_CHECK_HOSTNAME=false)"
        )
    return (
        f"the broker certificate at {address} is not trusted ({detail}): set"
        f" {V}SSL_CA_FILE to the CA that signed it"
    )


def _tls_refused(exc: ssl.SSLError, address: str) -> str:
    reason = str(exc.reason or exc)
    if any(alert in reason for alert in NOT_TLS):
        return (
            f"the broker at {address} does not speak TLS on that port ({reason}): set"
            f" {V}SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT, or use its TLS port"
        )
    if any(alert in reason for alert in CLIENT_CERTIFICATE_REFUSED):
        return (
            f"the broker at {address} does not accept the client certificate ({reason}):"
            f" check {V}SSL_CERT_FILE"
        )
    if any(alert in reason for alert in CLIENT_CERTIFICATE_ALERTS):
        return (
            f"the broker at {address} requires a client certificate ({reason}): set"
            f" {V}SSL_CERT_FILE and {V}SSL_KEY_FILE"
        )
    return f"the TLS handshake with {address} failed ({reason}): check {V}SSL_CA_FILE"


def _enabled(exc: UnsupportedSaslMechanismError) -> str:
    text = str(exc)
    marker = "Enabled mechanisms are:"
    # Only when the handshake succeeded but left our mechanism out does aiokafka keep the list.
    return f" (it offers {text.split(marker, 1)[1].strip()})" if marker in text else ""


def _first_server(bootstrap_servers: str) -> tuple[str, int]:
    first = bootstrap_servers.split(",", maxsplit=1)[0].strip()
    host, _, port = first.rpartition(":")
    if not host:
        return first, 9092
    return host.strip("[]"), int(port)
