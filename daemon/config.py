"""Settings: parsed once from the environment into a frozen object.

The variable names are a public contract (the Helm chart, the docs and external tooling use them).
A bad value stops start-up with a `ConfigError` naming the variable; the API key and every other
secret are `SecretStr`, so they never show in a `repr`, a log line or an error message. Each
secret can also be given as a file (`<NAME>_FILE`, a mounted Kubernetes Secret): the variable
wins when both are set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from daemon import limits
from daemon.errors import ConfigError
from daemon.unknown_settings import closest, unknown_variables

ENV_PREFIX = "PIVOTAL_SYNC_"
API_KEY_VARIABLE = "PIVOTAL_API_KEY"
API_KEY_FILE_VARIABLE = "PIVOTAL_API_KEY_FILE"


class LogFormat(StrEnum):
    AUTO = "auto"  # JSON when stderr is not a terminal, readable console otherwise
    JSON = "json"
    CONSOLE = "console"


class KafkaSecurityProtocol(StrEnum):
    """Kafka's `security.protocol`."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class KafkaSaslMechanism(StrEnum):
    """Kafka's `sasl.mechanism`, plus AWS_MSK_IAM (OAUTHBEARER with an AWS-signed token)."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"
    AWS_MSK_IAM = "AWS_MSK_IAM"


class DatabaseSslMode(StrEnum):
    """libpq's `sslmode` values."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


# Secret settings that may instead be read from a file named by `<VARIABLE>_FILE`.
SECRET_FIELDS = (
    "kafka_sasl_password",
    "kafka_ssl_key_password",
    "kafka_oauth_client_secret",
    "database_password",
)


class SlugConflictPolicy(StrEnum):
    ADOPT = "adopt"  # 409 slug_taken on create: find the customer by slug, store its id, PATCH
    DEAD_LETTER = "dead_letter"  # park the event instead


class Settings(BaseSettings):
    """Everything `pivotal-sync` reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        case_sensitive=True,
        hide_input_in_errors=True,
        populate_by_name=True,
    )

    # The key, from PIVOTAL_API_KEY (the name Pivotal's docs use) or read from PIVOTAL_API_KEY_FILE.
    api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices(API_KEY_VARIABLE))
    api_key_file: Path | None = Field(
        default=None, validation_alias=AliasChoices(API_KEY_FILE_VARIABLE)
    )
    api_url: str = "https://my.pivotal.app/api/v1"
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: str = "crm.customers"
    # Several topics in one consumer group, comma-separated (each with its format in the mapping
    # file); when set, it replaces KAFKA_TOPIC.
    kafka_topics: str | None = None
    # The mapping file (docs/formats.md): per topic, its input format and how its records
    # become Pivotal fields. Without it every topic speaks the built-in CloudEvents contract.
    mapping_file: Path | None = None
    kafka_group_id: str = "pivotal-sync"
    # Consumer group liveness. Kafka's defaults; lower them only on a broker that allows it
    # (the local tansu stand-in does, and the demo and tests use 1 s to rebalance quickly).
    kafka_session_timeout_ms: int = Field(default=10_000, ge=500)
    kafka_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    # Optional topic that receives a copy of every dead-lettered record (Postgres always does).
    kafka_dead_letter_topic: str | None = None
    # How every Kafka client (daemon and tools) connects: Kafka's security.protocol and
    # sasl.mechanism, the SASL login, and TLS files (CA; client certificate and key for mTLS).
    kafka_security_protocol: KafkaSecurityProtocol = KafkaSecurityProtocol.PLAINTEXT
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    # The CA bundle that signed the brokers' certificates (default: the system's roots).
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_key_password_file: Path | None = None
    # Check that the broker certificate names the host connected to (verification stays on).
    kafka_ssl_check_hostname: bool = True
    # SASL/OAUTHBEARER: an OIDC client-credentials grant at this token endpoint.
    kafka_oauth_token_url: str | None = None
    kafka_oauth_client_id: str | None = None
    kafka_oauth_client_secret: SecretStr | None = None
    kafka_oauth_client_secret_file: Path | None = None
    kafka_oauth_scope: str | None = None
    database_url: str | None = None
    # TLS to Postgres; each overrides the same libpq parameter in the URL when set.
    database_sslmode: DatabaseSslMode | None = None
    database_sslrootcert: Path | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None
    # The password, when it should not be part of the URL (a mounted Secret).
    database_password: SecretStr | None = None
    database_password_file: Path | None = None
    # Extra CA bundle trusted for the Pivotal API, on top of the public roots (an egress proxy
    # that re-signs TLS). HTTPS_PROXY / NO_PROXY are honoured as usual.
    api_ca_file: Path | None = None
    http_port: int = Field(default=9000, ge=0, le=65535)
    # The limiter's first guess; it learns the real limit from Pivotal's headers.
    rate_limit_per_minute: float = Field(default=60.0, gt=0)
    # Length of Pivotal's sliding window. Unset: start from 60 s and learn it from the headers;
    # set: this value, never learned (the sandbox can compress it).
    rate_limit_window_seconds: float | None = Field(default=None, gt=0, le=3600)
    # Replicas on one key share its window through a ledger in Postgres (daemon/quota_ledger.py);
    # false: each replica infers the others from the rate-limit headers alone.
    quota_ledger: bool = True
    # Upper bound on requests in flight; the limiter adapts below it with latency.
    max_in_flight: int = Field(default=16, ge=1, le=1024)
    request_timeout_seconds: float = Field(default=10.0, gt=0)
    # SIGTERM: finish in-flight work for at most this long. Keep it below Kubernetes'
    # terminationGracePeriodSeconds (the chart does).
    drain_timeout_seconds: float = Field(default=20.0, ge=0)
    # A contact or onboarding whose customer has no Pivotal id after this long: parent_missing.
    parent_timeout_seconds: float = Field(default=300.0, gt=0)
    # Events held whole in memory (each with its record and fields, ~1 KB) before fetching
    # pauses: bounded memory under any backlog.
    max_pending_events: int = Field(default=10_000, ge=10)
    # Events held merged into a waiting request (an id and a position, ~100 bytes with their
    # offset tracking) before fetching pauses: how far a coalescing backlog can be read ahead.
    max_merged_events: int = Field(default=500_000, ge=10)
    # While the key is refused (401), probe GET /me this often instead of sending work.
    auth_probe_interval_seconds: float = Field(default=15.0, gt=0)
    checkpoint_flush_interval_seconds: float = Field(default=0.05, gt=0)
    checkpoint_batch_size: int = Field(default=500, ge=1)
    # Checkpoint rows older than this are deleted (hourly); 0 keeps them forever. Keep it longer
    # than the topic's retention: a replay of an event whose row is gone costs a request again
    # (a PATCH, never a duplicate: the entity map is kept).
    checkpoint_retention_days: float = Field(default=30.0, ge=0)
    slug_conflict: SlugConflictPolicy = SlugConflictPolicy.ADOPT
    # Intake limits (daemon/limits.py): a record over one of them is dead-lettered before any
    # request, with a reason of its own, and the partition keeps moving.
    max_record_bytes: int = Field(default=limits.MAX_RECORD_BYTES, ge=1024)
    max_nesting_depth: int = Field(default=limits.MAX_NESTING_DEPTH, ge=2, le=500)
    max_field_chars: int = Field(default=limits.MAX_FIELD_CHARS, ge=1)
    max_sequence_jump: int = Field(default=limits.MAX_SEQUENCE_JUMP, ge=1)
    # metadata.source on every record the daemon creates.
    record_source: str = "pivotal-sync"
    dry_run: bool = False
    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "info"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return value.lower()

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("kafka_topics")
    @classmethod
    def _topic_list(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [name.strip() for name in value.split(",")]
        if not all(names):
            raise ValueError("must be topic names separated by commas, none empty")
        if len(set(names)) != len(names):
            raise ValueError("names a topic twice")
        return ",".join(names)

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics the daemon consumes: KAFKA_TOPICS when set, else KAFKA_TOPIC."""
        if self.kafka_topics is not None:
            return tuple(self.kafka_topics.split(","))
        return (self.kafka_topic,)

    @field_validator("database_url")
    @classmethod
    def _libpq_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a libpq URL: postgresql://user@host:5432/db")
        return value

    @field_validator("kafka_oauth_token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http://)")
        return value

    def check_connections(self) -> None:
        """Raise ConfigError for connection settings that cannot work, whatever the servers say."""
        _check_kafka_security(self)
        _check_files(self)

    def require_api_key(self) -> SecretStr:
        """The key, or a ConfigError naming both ways to give it."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key
        raise ConfigError(
            API_KEY_VARIABLE, f"not set (set it, or {API_KEY_FILE_VARIABLE} to a file holding it)"
        )

    def intake_limits(self) -> limits.Limits:
        return limits.Limits(
            max_record_bytes=self.max_record_bytes,
            max_nesting_depth=self.max_nesting_depth,
            max_field_chars=self.max_field_chars,
            max_sequence_jump=self.max_sequence_jump,
        )

    def require_database_url(self) -> str:
        """The libpq URL with the DATABASE_SSL* and DATABASE_PASSWORD settings merged in."""
        if not self.database_url:
            raise ConfigError(f"{ENV_PREFIX}DATABASE_URL", "not set")
        from daemon.postgres_access import with_tls_options  # noqa: PLC0415 - loads asyncpg

        def text(path: Path | None) -> str | None:
            return None if path is None else str(path)

        return with_tls_options(
            self.database_url,
            sslmode=self.database_sslmode.value if self.database_sslmode else None,
            sslrootcert=text(self.database_sslrootcert),
            sslcert=text(self.database_sslcert),
            sslkey=text(self.database_sslkey),
            password=self.database_password,
        )


def _check_kafka_security(s: Settings) -> None:
    v = f"{ENV_PREFIX}KAFKA_"
    sasl = s.kafka_security_protocol in (
        KafkaSecurityProtocol.SASL_PLAINTEXT,
        KafkaSecurityProtocol.SASL_SSL,
    )
    tls = s.kafka_security_protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)
    mechanism = s.kafka_sasl_mechanism
    if sasl and mechanism is None:
        raise ConfigError(f"{v}SASL_MECHANISM", "not set (SASL_* protocols need a mechanism)")
    if not sasl and mechanism is not None:
        raise ConfigError(
            f"{v}SECURITY_PROTOCOL", f"must be SASL_SSL or SASL_PLAINTEXT to use {mechanism}"
        )
    if not tls and (s.kafka_ssl_ca_file or s.kafka_ssl_cert_file or s.kafka_ssl_key_file):
        raise ConfigError(
            f"{v}SECURITY_PROTOCOL", "must be SSL or SASL_SSL when TLS files are given"
        )
    if mechanism in (
        KafkaSaslMechanism.PLAIN,
        KafkaSaslMechanism.SCRAM_SHA_256,
        KafkaSaslMechanism.SCRAM_SHA_512,
    ):
        if not s.kafka_sasl_username:
            raise ConfigError(f"{v}SASL_USERNAME", f"not set ({mechanism} needs it)")
        if s.kafka_sasl_password is None:
            raise ConfigError(f"{v}SASL_PASSWORD", f"not set ({mechanism} needs it)")
    if mechanism is KafkaSaslMechanism.OAUTHBEARER:
        for name in ("token_url", "client_id", "client_secret"):
            if not getattr(s, f"kafka_oauth_{name}"):
                raise ConfigError(f"{v}OAUTH_{name.upper()}", "not set (OAUTHBEARER needs it)")
    if bool(s.kafka_ssl_cert_file) != bool(s.kafka_ssl_key_file):
        raise ConfigError(
            f"{v}SSL_KEY_FILE" if s.kafka_ssl_cert_file else f"{v}SSL_CERT_FILE",
            "a client certificate needs both SSL_CERT_FILE and SSL_KEY_FILE",
        )


def _check_files(s: Settings) -> None:
    for field in (
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "database_sslrootcert",
        "database_sslcert",
        "database_sslkey",
        "api_ca_file",
    ):
        path: Path | None = getattr(s, field)
        if path is not None and not path.is_file():
            raise ConfigError(_variable_for(field), f"no such file: {path}")


def _read_secret_files(env: Mapping[str, str], data: dict[str, Any]) -> None:
    """Fill each unset secret from its `_FILE` variable (a mounted Secret), trailing newline cut."""
    for field in SECRET_FIELDS:
        variable = _variable_for(field)
        path = env.get(f"{variable}_FILE")
        if path and not env.get(variable):
            try:
                data[variable] = Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{variable}_FILE", f"cannot read: {exc.strerror}") from None


def _variable_for(field: str) -> str:
    if field == "api_key":
        return API_KEY_VARIABLE
    if field == "api_key_file":
        return API_KEY_FILE_VARIABLE
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse settings from `environ` (default: the process environment).

    Raises ConfigError naming the first bad variable; the message never echoes the value.
    """
    env = dict(os.environ if environ is None else environ)
    _refuse_unknown(env)
    data: dict[str, Any] = {}
    for name, value in env.items():
        if name in (API_KEY_VARIABLE, API_KEY_FILE_VARIABLE) or name.startswith(ENV_PREFIX):
            data[name] = value
    key_file = env.get(API_KEY_FILE_VARIABLE)
    if key_file and not env.get(API_KEY_VARIABLE):
        try:
            data[API_KEY_VARIABLE] = Path(key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(API_KEY_FILE_VARIABLE, f"cannot read: {exc.strerror}") from None
    _read_secret_files(env, data)
    try:
        # Only what we pass is read: pydantic-settings would otherwise consult os.environ too.
        settings = Settings.model_validate(
            {_field_for(name): value for name, value in data.items() if _field_for(name)}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise ConfigError(_variable_for(field), first["msg"]) from None
    settings.check_connections()
    return settings


def known_variables() -> set[str]:
    """Every variable a setting is read from."""
    return {_variable_for(field) for field in Settings.model_fields}


def _refuse_unknown(env: Mapping[str, str]) -> None:
    known = known_variables()
    unknown = unknown_variables(env, ENV_PREFIX, known)
    if not unknown:
        return
    name = unknown[0]
    guess = closest(name, known)
    hint = f"did you mean {guess}?" if guess else "the settings are listed in README.md"
    others = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise ConfigError(name, f"unknown setting, {hint}{others}")


def _field_for(variable: str) -> str:
    if variable == API_KEY_VARIABLE:
        return "api_key"
    if variable == API_KEY_FILE_VARIABLE:
        return "api_key_file"
    name = variable.removeprefix(ENV_PREFIX).lower()
    return name if name in Settings.model_fields else ""
