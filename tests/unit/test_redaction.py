"""redact: secrets never reach a log line, a table or a tool's output, however they arrive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon import redaction
from daemon.config import load_settings
from daemon.redaction import REDACTED, redact, redact_any

KEY = "pivotal_K8s9_s3cr3t-remainder"


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    redaction.forget_all()
    redaction.register_secret(KEY)
    yield
    redaction.forget_all()


def test_a_registered_key_is_replaced_wherever_it_appears() -> None:
    """An echo of the key inside any text loses the key."""
    body = f'{{"error": "bad", "echo": "x-api-key={KEY}"}}'
    assert KEY not in redact(body)
    assert REDACTED in redact(body)


def test_an_echoed_authorization_header_is_redacted_even_for_an_unregistered_token() -> None:
    """A gateway echoing `Authorization: Bearer …` leaks someone's key; the token goes."""
    text = "<pre>Authorization: Bearer someone_elses_key_123456</pre>"
    assert redact(text) == f"<pre>Authorization: Bearer {REDACTED}</pre>"


def test_the_url_encoded_form_of_a_secret_is_redacted_too() -> None:
    """A secret with reserved characters is found in a URL or form body as well."""
    redaction.register_secret("p@ss/word:9")
    assert "p%40ss%2Fword%3A9" not in redact("dsn?password=p%40ss%2Fword%3A9")


def test_the_postgres_password_is_taken_from_the_dsn() -> None:
    """register_dsn_password finds the password of a libpq URL, percent-decoded."""
    redaction.register_dsn_password("postgresql://sync:hunter%2342@db:5432/sync")
    assert redact("auth failed for hunter#42") == f"auth failed for {REDACTED}"


def test_a_dsn_without_password_registers_nothing() -> None:
    """Trust auth and socket DSNs have no password: nothing is added."""
    before = set(redaction.registered())
    redaction.register_dsn_password("postgresql://postgres@127.0.0.1:5432/postgres")
    assert set(redaction.registered()) == before


def test_a_very_short_secret_is_not_registered() -> None:
    """A two-letter 'secret' would blank out ordinary words in every log line."""
    redaction.register_secret("ab")
    assert redact("table tab") == "table tab"


def test_a_secret_containing_another_is_removed_whole() -> None:
    """The longer secret goes first, so no tail of it is left behind."""
    redaction.register_secret(KEY + "-extended")
    assert redact(KEY + "-extended") == REDACTED


def test_redact_any_walks_structures_and_exceptions() -> None:
    """Nested dicts, lists, tuples and exception objects are scrubbed."""
    scrubbed = redact_any({"a": [KEY, (KEY,)], "error": RuntimeError(f"key {KEY}")})
    assert KEY not in repr(scrubbed)


def test_a_structure_too_deep_to_walk_is_replaced_not_raised() -> None:
    """A log call or a tool's output never crashes on an absurdly nested value."""
    value: list[object] = []
    for _ in range(5000):
        value = [value]
    assert redact_any({"v": value}) == "[not shown: nested too deep]"


def test_every_secret_setting_and_the_database_url_password_are_registered() -> None:
    """The API key, the Kafka and Postgres secrets, and a password inside the libpq URL."""
    settings = load_settings(
        {
            "PIVOTAL_API_KEY": "pivotal_live_abcdef123",
            "PIVOTAL_SYNC_KAFKA_SASL_PASSWORD": "sasl-secret-1",
            "PIVOTAL_SYNC_DATABASE_URL": "postgresql://sync:dsn-secret-2@db/sync",
        }
    )
    redaction.register_settings(settings)
    text = redact("pivotal_live_abcdef123 sasl-secret-1 dsn-secret-2")
    assert text == f"{REDACTED} {REDACTED} {REDACTED}"
