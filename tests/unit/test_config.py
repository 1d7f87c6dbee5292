"""Settings: parsed once from the environment, loud about bad values, silent about secrets."""

from pathlib import Path

import pytest

from daemon.config import LogFormat, load_settings
from daemon.errors import ConfigError

KEY = "pivotal_live_s3cr3t_value"


def test_defaults_follow_the_public_contract() -> None:
    settings = load_settings({})
    assert settings.api_url == "https://my.pivotal.app/api/v1"
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.kafka_topic == "crm.customers"
    assert settings.kafka_group_id == "pivotal-sync"
    assert settings.http_port == 9000
    assert settings.log_format is LogFormat.AUTO


def test_prefixed_variables_are_read() -> None:
    settings = load_settings(
        {
            "PIVOTAL_SYNC_KAFKA_TOPIC": "crm.x",
            "PIVOTAL_SYNC_HTTP_PORT": "9100",
            "PIVOTAL_API_KEY": KEY,
        }
    )
    assert settings.kafka_topic == "crm.x"
    assert settings.http_port == 9100
    assert settings.require_api_key().get_secret_value() == KEY


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PIVOTAL_SYNC_HTTP_PORT") as caught:
        load_settings({"PIVOTAL_SYNC_HTTP_PORT": "nine thousand"})
    assert caught.value.variable == "PIVOTAL_SYNC_HTTP_PORT"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PIVOTAL_SYNC_DRY_RUN", "maybe"),
        ("PIVOTAL_SYNC_MAX_IN_FLIGHT", "0"),
        ("PIVOTAL_SYNC_RATE_LIMIT_PER_MINUTE", "-5"),
        ("PIVOTAL_SYNC_API_URL", "ftp://example"),
        ("PIVOTAL_SYNC_DATABASE_URL", "mysql://x"),
        ("PIVOTAL_SYNC_LOG_LEVEL", "loud"),
        ("PIVOTAL_SYNC_LOG_FORMAT", "xml"),
    ],
)
def test_every_invalid_setting_stops_start_up_naming_it(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({variable: value})


def test_booleans_are_strict_but_accept_the_usual_spellings() -> None:
    assert load_settings({"PIVOTAL_SYNC_DRY_RUN": "true"}).dry_run is True
    assert load_settings({"PIVOTAL_SYNC_DRY_RUN": "0"}).dry_run is False


def test_a_missing_api_key_names_both_ways_to_give_it() -> None:
    with pytest.raises(ConfigError, match="PIVOTAL_API_KEY_FILE"):
        load_settings({}).require_api_key()


def test_the_api_key_can_come_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    settings = load_settings({"PIVOTAL_API_KEY_FILE": str(key_file)})
    assert settings.require_api_key().get_secret_value() == KEY


def test_an_unreadable_key_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PIVOTAL_API_KEY_FILE"):
        load_settings({"PIVOTAL_API_KEY_FILE": str(tmp_path / "missing")})


def test_the_api_key_never_shows_in_repr_or_str() -> None:
    settings = load_settings({"PIVOTAL_API_KEY": KEY})
    assert KEY not in repr(settings)
    assert KEY not in str(settings)


def test_an_error_about_the_key_never_echoes_it() -> None:
    # A key with a bad type cannot happen from the environment (always text), so check the
    # validation message path with a value-bearing field next to a key instead.
    with pytest.raises(ConfigError) as caught:
        load_settings({"PIVOTAL_API_KEY": KEY, "PIVOTAL_SYNC_HTTP_PORT": KEY})
    assert KEY not in str(caught.value)
