"""Postgres over TLS: the `PIVOTAL_SYNC_DATABASE_SSL*` settings reach asyncpg through the URL,
`verify-full` passes against the right CA, and each failure is one sentence naming the setting."""

from __future__ import annotations

import asyncpg
import pytest

from daemon.checkpoints import CheckpointStore
from daemon.config import load_settings
from daemon.postgres_access import explain
from tests.fixtures.certificates import Certificates
from tests.fixtures.tls_postgres import TlsPostgres

pytestmark = pytest.mark.postgres


def dsn(url: str, **settings: str) -> str:
    env = {"PIVOTAL_SYNC_DATABASE_URL": url}
    env.update({f"PIVOTAL_SYNC_DATABASE_{k.upper()}": v for k, v in settings.items()})
    return load_settings(env).require_database_url()


async def failure(url: str) -> str:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - explain() takes any failure
        await asyncpg.connect(url, timeout=10)
    return explain(caught.value)


async def test_verify_full_connects_with_the_ca_from_the_settings(
    tls_postgres: TlsPostgres, certificates: Certificates
) -> None:
    """sslmode=verify-full and SSLROOTCERT from settings give an encrypted, verified session."""
    url = dsn(tls_postgres.url(), sslmode="verify-full", sslrootcert=str(certificates.ca_file))
    async with await CheckpointStore.connect(url) as store:
        await store.migrate()
    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await connection.close()


async def test_url_parameters_work_without_the_settings(
    tls_postgres: TlsPostgres, certificates: Certificates
) -> None:
    """The libpq URL's own sslmode/sslrootcert are honoured as they are."""
    url = dsn(tls_postgres.url(sslmode="verify-full", sslrootcert=str(certificates.ca_file)))
    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()


async def test_a_wrong_ca_names_the_rootcert_setting(
    tls_postgres: TlsPostgres, certificates: Certificates
) -> None:
    """A server certificate from another CA is explained as SSLROOTCERT to fix."""
    url = dsn(
        tls_postgres.url(), sslmode="verify-full", sslrootcert=str(certificates.wrong_ca_file)
    )
    reason = await failure(url)
    assert "Postgres certificate is not trusted" in reason
    assert "PIVOTAL_SYNC_DATABASE_SSLROOTCERT" in reason


async def test_a_server_without_tls_is_named_as_refusing_it(certificates: Certificates) -> None:
    """sslmode=require against a server with ssl=off says Postgres refused TLS."""
    with TlsPostgres(certificates, ssl=False) as plain:
        reason = await failure(dsn(plain.url(), sslmode="require"))
    assert reason.startswith("Postgres refused TLS")
    assert "PIVOTAL_SYNC_DATABASE_SSLMODE" in reason
