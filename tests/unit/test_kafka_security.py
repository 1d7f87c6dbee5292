"""Kafka, Postgres and API security settings: parsing, secrets kept out of sight, the checks that
stop start-up, the client keyword arguments, and the OAuth token provider's refresh rules."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from daemon.config import KafkaSaslMechanism, KafkaSecurityProtocol, load_settings
from daemon.errors import ConfigError
from daemon.kafka_clients import KafkaClients
from daemon.kafka_oauth import (
    ClientCredentialsTokenProvider,
    MskIamTokenProvider,
    TokenUnavailable,
    msk_region,
)
from tests.fixtures.certificates import CLIENT_KEY_PASSWORD, Certificates, make_certificates

K = "PIVOTAL_SYNC_KAFKA_"
SCRAM = {
    f"{K}SECURITY_PROTOCOL": "SASL_SSL",
    f"{K}SASL_MECHANISM": "SCRAM-SHA-512",
    f"{K}SASL_USERNAME": "sync",
    f"{K}SASL_PASSWORD": "hunter2-secret",
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_scram_settings_become_client_keyword_arguments() -> None:
    """SASL_SSL + SCRAM gives aiokafka the protocol, mechanism, login and a verifying context."""
    kwargs = KafkaClients(load_settings(SCRAM)).kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "sync"
    assert kwargs["sasl_plain_password"] == "hunter2-secret"
    assert kwargs["ssl_context"].check_hostname is True


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    """Without security settings the clients get only the bootstrap servers and PLAINTEXT."""
    assert KafkaClients(load_settings({})).kwargs() == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    """Passwords and client secrets are hidden from the settings' and clients' repr."""
    settings = load_settings(SCRAM)
    kafka = KafkaClients(settings)
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in repr(kafka)
    assert isinstance(settings.kafka_sasl_password, SecretStr)


def test_every_secret_can_come_from_a_file(tmp_path: Path) -> None:
    """Each secret has a _FILE variant; the trailing newline of a mounted Secret is cut."""
    names = ["KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD", "KAFKA_OAUTH_CLIENT_SECRET"]
    names.append("DATABASE_PASSWORD")
    env = {}
    for name in names:
        path = tmp_path / name
        path.write_text(f"from-file-{name}\n")
        env[f"PIVOTAL_SYNC_{name}_FILE"] = str(path)
    settings = load_settings(env)
    for name in names:
        secret = getattr(settings, name.lower())
        assert secret.get_secret_value() == f"from-file-{name}"


def test_an_unreadable_secret_file_names_its_variable(tmp_path: Path) -> None:
    """A _FILE variable pointing nowhere stops start-up naming that variable."""
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError) as caught:
        load_settings({f"{K}SASL_PASSWORD_FILE": missing})
    assert caught.value.variable == f"{K}SASL_PASSWORD_FILE"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({f"{K}SECURITY_PROTOCOL": "SASL_SSL"}, f"{K}SASL_MECHANISM"),
        ({f"{K}SASL_MECHANISM": "PLAIN"}, f"{K}SECURITY_PROTOCOL"),
        ({f"{K}SECURITY_PROTOCOL": "TLS"}, f"{K}SECURITY_PROTOCOL"),
        (
            {f"{K}SECURITY_PROTOCOL": "SASL_SSL", f"{K}SASL_MECHANISM": "GSSAPI"},
            f"{K}SASL_MECHANISM",
        ),
        ({**SCRAM, f"{K}SASL_USERNAME": ""}, f"{K}SASL_USERNAME"),
        (
            {f"{K}SECURITY_PROTOCOL": "SASL_SSL", f"{K}SASL_MECHANISM": "OAUTHBEARER"},
            f"{K}OAUTH_TOKEN_URL",
        ),
        ({f"{K}SSL_CA_FILE": "/etc/hostname"}, f"{K}SECURITY_PROTOCOL"),
        ({f"{K}SECURITY_PROTOCOL": "SSL", f"{K}SSL_CA_FILE": "/no/such.pem"}, f"{K}SSL_CA_FILE"),
        ({f"{K}SSL_CHECK_HOSTNAME": "maybe"}, f"{K}SSL_CHECK_HOSTNAME"),
        ({"PIVOTAL_SYNC_DATABASE_SSLMODE": "verify"}, "PIVOTAL_SYNC_DATABASE_SSLMODE"),
        ({"PIVOTAL_SYNC_API_CA_FILE": "/no/such.pem"}, "PIVOTAL_SYNC_API_CA_FILE"),
    ],
)
def test_settings_invalid_on_their_face_stop_start_up(env: dict[str, str], variable: str) -> None:
    """Contradictory or incomplete security settings are a ConfigError naming the variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.variable == variable


def test_a_wrong_client_key_password_stops_start_up(certs: Certificates) -> None:
    """An encrypted client key with the wrong password names SSL_KEY_PASSWORD (exit 2)."""
    env = {
        f"{K}SECURITY_PROTOCOL": "SSL",
        f"{K}SSL_CERT_FILE": str(certs.client_cert_file),
        f"{K}SSL_KEY_FILE": str(certs.client_key_file),
        f"{K}SSL_KEY_PASSWORD": "wrong",
    }
    with pytest.raises(ConfigError) as caught:
        KafkaClients(load_settings(env))
    assert caught.value.variable == f"{K}SSL_KEY_PASSWORD"
    env[f"{K}SSL_KEY_PASSWORD"] = CLIENT_KEY_PASSWORD
    assert KafkaClients(load_settings(env)).kwargs()["ssl_context"] is not None


def test_a_file_that_is_not_a_ca_bundle_names_the_ca_setting(tmp_path: Path) -> None:
    """SSL_CA_FILE that holds no certificate stops start-up naming it."""
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    env = {f"{K}SECURITY_PROTOCOL": "SSL", f"{K}SSL_CA_FILE": str(junk)}
    with pytest.raises(ConfigError) as caught:
        KafkaClients(load_settings(env))
    assert caught.value.variable == f"{K}SSL_CA_FILE"


def test_database_tls_settings_are_merged_into_the_url() -> None:
    """SSLMODE/SSLROOTCERT/SSLCERT/SSLKEY and the password override the URL's own values."""
    settings = load_settings(
        {
            "PIVOTAL_SYNC_DATABASE_URL": "postgresql://sync@db:5432/sync?sslmode=prefer",
            "PIVOTAL_SYNC_DATABASE_SSLMODE": "verify-full",
            "PIVOTAL_SYNC_DATABASE_SSLROOTCERT": "/etc/hostname",
            "PIVOTAL_SYNC_DATABASE_PASSWORD": "p@ss/word",
        }
    )
    url = settings.require_database_url()
    assert url == (
        "postgresql://sync:p%40ss%2Fword@db:5432/sync?sslmode=verify-full&sslrootcert=/etc/hostname"
    )
    assert "p@ss/word" not in repr(settings)


def test_the_mechanisms_map_to_the_wire() -> None:
    """AWS_MSK_IAM travels as OAUTHBEARER with a signed token; the region comes from the host."""
    env = {
        f"{K}BOOTSTRAP_SERVERS": "b-1.c.abc.c2.kafka.eu-west-1.amazonaws.com:9098",
        f"{K}SECURITY_PROTOCOL": "SASL_SSL",
        f"{K}SASL_MECHANISM": "AWS_MSK_IAM",
    }
    kafka = KafkaClients(load_settings(env))
    kwargs = kafka.kwargs()
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(kwargs["sasl_oauth_token_provider"], MskIamTokenProvider)
    assert kwargs["sasl_oauth_token_provider"].region == "eu-west-1"
    assert kafka.mechanism is KafkaSaslMechanism.AWS_MSK_IAM
    assert kafka.protocol is KafkaSecurityProtocol.SASL_SSL


async def test_the_msk_signer_makes_a_token_from_aws_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With AWS credentials in the environment, the signer produces a token (signed locally)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    token = await MskIamTokenProvider("eu-west-1").token()
    decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    assert decoded.startswith("https://kafka.eu-west-1.amazonaws.com/")
    assert "X-Amz-Signature=" in decoded


def test_msk_region_falls_back_to_aws_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bootstrap address that names no region uses AWS_REGION."""
    monkeypatch.setenv("AWS_REGION", "us-east-2")
    assert msk_region("kafka.internal:9098") == "us-east-2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def token_endpoint(answers: list[httpx.Response]) -> tuple[httpx.MockTransport, list[bytes]]:
    seen: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"id:s3").decode()
        return answers.pop(0)

    return httpx.MockTransport(handle), seen


def provider(transport: httpx.MockTransport, clock: FakeClock) -> ClientCredentialsTokenProvider:
    return ClientCredentialsTokenProvider(
        token_url="https://idp.example/token",
        client_id="id",
        client_secret=SecretStr("s3"),
        scope="kafka",
        clock=clock,
        transport=transport,
    )


def ok(token: str, expires_in: float = 100) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "expires_in": expires_in})


async def test_a_token_is_reused_until_80_percent_of_its_lifetime_then_refreshed() -> None:
    """The cached token serves new connections until 80 % of its life, then a new one is fetched."""
    clock = FakeClock()
    transport, seen = token_endpoint([ok("one"), ok("two")])
    tokens = provider(transport, clock)
    assert await tokens.token() == "one"
    clock.now += 79
    assert await tokens.token() == "one"
    clock.now += 2
    assert await tokens.token() == "two"
    assert seen[0] == b"grant_type=client_credentials&scope=kafka"
    assert tokens.tokens_fetched == 2


async def test_a_failed_refresh_keeps_the_still_valid_token() -> None:
    """A token endpoint outage during refresh is ridden out on the cached token."""
    clock = FakeClock()
    transport, _ = token_endpoint([ok("one"), httpx.Response(503)])
    tokens = provider(transport, clock)
    await tokens.token()
    clock.now += 90
    assert await tokens.token() == "one"
    assert not tokens.expired


async def test_an_expired_token_that_cannot_be_refreshed_names_the_client_settings() -> None:
    """Once the token has expired and the endpoint refuses the client, the error names it."""
    clock = FakeClock()
    transport, _ = token_endpoint([ok("one", 10), httpx.Response(401, json={})])
    tokens = provider(transport, clock)
    await tokens.token()
    clock.now += 11
    with pytest.raises(TokenUnavailable) as caught:
        await tokens.token()
    assert "PIVOTAL_SYNC_KAFKA_OAUTH_CLIENT_SECRET" in str(caught.value)
    assert "s3" not in str(caught.value)
    assert tokens.expired
