"""Kafka over TLS, mTLS, SASL SCRAM/PLAIN and OAUTHBEARER: the real tansu behind the secured
front, every client built by `KafkaClients` from `PIVOTAL_SYNC_KAFKA_*` settings, and each
misconfiguration explained by `diagnose()` in one sentence naming the setting to fix."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import TopicPartition

from daemon.config import load_settings
from daemon.kafka_clients import KafkaClients
from tests.fixtures.secure_kafka import SecureKafka

pytestmark = pytest.mark.kafka


def clients(env: dict[str, str], **overrides: str) -> KafkaClients:
    return KafkaClients(load_settings({**env, **overrides}))


async def round_trip(kafka: KafkaClients) -> bytes:
    """Create a topic, produce one record and read it back, all through `kafka`."""
    topic = f"secure-{uuid.uuid4().hex[:10]}"
    from aiokafka.admin import NewTopic  # noqa: PLC0415

    admin = kafka.admin()
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = kafka.producer(acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = kafka.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        batches = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    values = [r.value for batch in batches.values() for r in batch]
    assert values, "nothing read back"
    return bytes(values[0])


@pytest.mark.parametrize("mode", ["tls", "mtls", "scram-tls", "oauth"])
async def test_clients_produce_and_consume_through_each_security_mode(
    secure_kafka: SecureKafka, mode: str
) -> None:
    """Admin, producer and consumer all work through TLS, mTLS, SCRAM over TLS and OAUTHBEARER."""
    env = secure_kafka.secured(mode)
    kafka = clients(env)
    assert await kafka.diagnose() == ""
    assert await round_trip(kafka) == b"hello"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
async def test_the_other_sasl_mechanisms_log_in(secure_kafka: SecureKafka, mechanism: str) -> None:
    """SCRAM-SHA-256 and PLAIN log in as well as SCRAM-SHA-512."""
    env = secure_kafka.secured("scram-tls")
    before = secure_kafka.front.logins
    kafka = clients(env, PIVOTAL_SYNC_KAFKA_SASL_MECHANISM=mechanism)
    assert await round_trip(kafka) == b"hello"
    assert secure_kafka.front.logins > before


async def test_a_wrong_password_names_the_sasl_settings(secure_kafka: SecureKafka) -> None:
    """A refused SCRAM login is explained as the username/password settings to check."""
    env = secure_kafka.secured("scram-tls")
    kafka = clients(env, PIVOTAL_SYNC_KAFKA_SASL_PASSWORD="wrong")
    reason = await kafka.diagnose()
    assert "refused the SCRAM-SHA-512 login" in reason
    assert "PIVOTAL_SYNC_KAFKA_SASL_PASSWORD" in reason
    assert "wrong" not in reason


async def test_a_mechanism_the_broker_does_not_enable_is_named(secure_kafka: SecureKafka) -> None:
    """A mechanism the listener does not offer names SASL_MECHANISM and what it offers."""
    env = secure_kafka.secured("oauth")
    kafka = clients(
        env,
        PIVOTAL_SYNC_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        PIVOTAL_SYNC_KAFKA_SASL_USERNAME="u",
        PIVOTAL_SYNC_KAFKA_SASL_PASSWORD="p",
    )
    reason = await kafka.diagnose()
    assert "does not enable SASL mechanism SCRAM-SHA-256" in reason
    assert "PIVOTAL_SYNC_KAFKA_SASL_MECHANISM" in reason


async def test_an_untrusted_broker_certificate_names_the_ca_setting(
    secure_kafka: SecureKafka,
) -> None:
    """A broker certificate from another CA is explained as SSL_CA_FILE to fix."""
    env = secure_kafka.secured("tls")
    wrong = str(secure_kafka.certificates.wrong_ca_file)
    reason = await clients(env, PIVOTAL_SYNC_KAFKA_SSL_CA_FILE=wrong).diagnose()
    assert "is not trusted" in reason
    assert "PIVOTAL_SYNC_KAFKA_SSL_CA_FILE" in reason


async def test_a_missing_client_certificate_names_the_cert_settings(
    secure_kafka: SecureKafka,
) -> None:
    """A listener that requires mTLS, reached without a certificate, names SSL_CERT_FILE."""
    env = secure_kafka.secured("mtls")
    for name in ("CERT_FILE", "KEY_FILE", "KEY_PASSWORD"):
        env.pop(f"PIVOTAL_SYNC_KAFKA_SSL_{name}")
    reason = await clients(env).diagnose()
    assert "PIVOTAL_SYNC_KAFKA_SSL_CERT_FILE" in reason


async def test_a_plaintext_client_against_a_tls_listener_names_the_protocol(
    secure_kafka: SecureKafka,
) -> None:
    """PLAINTEXT against a TLS listener says to set SECURITY_PROTOCOL to SSL or SASL_SSL."""
    env = secure_kafka.secured("tls")
    env = {"PIVOTAL_SYNC_KAFKA_BOOTSTRAP_SERVERS": env["PIVOTAL_SYNC_KAFKA_BOOTSTRAP_SERVERS"]}
    reason = await clients(env).diagnose()
    assert "PIVOTAL_SYNC_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL" in reason


async def test_a_refused_token_request_names_the_oauth_client_settings(
    secure_kafka: SecureKafka,
) -> None:
    """When the token endpoint refuses the client, the reason names CLIENT_ID/CLIENT_SECRET."""
    env = secure_kafka.secured("oauth")
    secret = "not-the-secret"
    reason = await clients(env, PIVOTAL_SYNC_KAFKA_OAUTH_CLIENT_SECRET=secret).diagnose()
    assert "refused the client credentials (HTTP 401)" in reason
    assert "PIVOTAL_SYNC_KAFKA_OAUTH_CLIENT_SECRET" in reason
    assert secret not in reason
