"""SASL/OAUTHBEARER token providers for aiokafka.

- `ClientCredentialsTokenProvider`: the OIDC client-credentials grant (RFC 6749 §4.4) against a
  token endpoint (Confluent Cloud, Keycloak for Strimzi, Okta, Azure AD). aiokafka asks for a
  token each time it opens a connection; a cached token is handed out until 80 % of its
  lifetime has passed (Kafka's `sasl.login.refresh.window.factor`), so a connection never
  starts with a token about to expire, and a brief token-endpoint outage is ridden out on the
  cached token while it is still valid.
- `MskIamTokenProvider`: Amazon MSK IAM, a SigV4-presigned URL from AWS's signer package and
  the pod's AWS credentials (optional extra `pivotal-sync[msk-iam]`).

A token that cannot be had raises `TokenUnavailable`, a `KafkaError`, so the Kafka clients treat
it like any broker refusal: retried with backoff, explained by `kafka_clients.diagnose`.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaError
from pydantic import SecretStr

TOKEN_REQUEST_TIMEOUT_SECONDS = 10.0
# Refresh once this fraction of a token's lifetime has passed (Kafka's default window).
REFRESH_WINDOW_FACTOR = 0.8
# Without `expires_in` in the answer, assume this (RFC 6749 makes it optional).
DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0
ID_VARIABLE = "PIVOTAL_SYNC_KAFKA_OAUTH_CLIENT_ID"
SECRET_VARIABLE = "PIVOTAL_SYNC_KAFKA_OAUTH_CLIENT_SECRET"  # noqa: S105 - a name
URL_VARIABLE = "PIVOTAL_SYNC_KAFKA_OAUTH_TOKEN_URL"
MSK_HOST = re.compile(r"\.kafka(?:-serverless)?\.([a-z0-9-]+)\.amazonaws\.com(?::\d+)?$")


class TokenUnavailable(KafkaError):  # type: ignore[misc]
    """No OAUTHBEARER token could be obtained; the message names the setting to check."""

    retriable = True


class ClientCredentialsTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """Tokens from an OIDC token endpoint by the client-credentials grant, cached and refreshed."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = token_url
        self._client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._verify: ssl.SSLContext | bool = ssl_context or True
        self._clock = clock
        self._transport = transport
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        # One request at a time: several connections opening together share one new token.
        self._lock = asyncio.Lock()
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"ClientCredentialsTokenProvider(token_url={self._url!r}, client_id=...)"

    @property
    def expired(self) -> bool:
        """Whether no valid token is held (none fetched yet, or the last one has expired)."""
        return self._token is None or self._clock() >= self._expires_at

    async def token(self) -> str:
        async with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                await self._fetch()
            except TokenUnavailable:
                if self._token is not None and now < self._expires_at:
                    return self._token  # still valid: try again at the next connection
                raise
            assert self._token is not None
            return self._token

    async def _fetch(self) -> None:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        # Client authentication by HTTP Basic (RFC 6749 §2.3.1), which every provider accepts.
        auth = httpx.BasicAuth(self._client_id, self._secret.get_secret_value())
        async with httpx.AsyncClient(
            verify=self._verify, timeout=TOKEN_REQUEST_TIMEOUT_SECONDS, transport=self._transport
        ) as client:
            try:
                response = await client.post(self._url, data=form, auth=auth)
            except httpx.HTTPError as exc:
                raise TokenUnavailable(
                    f"the OAuth token endpoint is unreachable ({type(exc).__name__}): "
                    f"check {URL_VARIABLE}"
                ) from None
        self._accept(response)

    def _accept(self, response: httpx.Response) -> None:
        if response.status_code in (400, 401, 403):
            raise TokenUnavailable(
                f"the OAuth token endpoint refused the client credentials "
                f"(HTTP {response.status_code}): check {ID_VARIABLE} and {SECRET_VARIABLE}"
            )
        try:
            body: dict[str, Any] = response.raise_for_status().json()
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_SECONDS)
        except (httpx.HTTPStatusError, ValueError, KeyError, TypeError):
            raise TokenUnavailable(
                f"the OAuth token endpoint answered HTTP {response.status_code} without a token: "
                f"check {URL_VARIABLE}"
            ) from None
        now = self._clock()
        self._token = token
        self._expires_at = now + lifetime
        self._refresh_at = now + lifetime * REFRESH_WINDOW_FACTOR
        self.tokens_fetched += 1


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """Amazon MSK IAM tokens, signed locally with the default AWS credential chain."""

    def __init__(self, region: str) -> None:
        try:
            from aws_msk_iam_sasl_signer import MSKAuthTokenProvider  # noqa: PLC0415
        except ImportError:
            raise TokenUnavailable(
                "AWS_MSK_IAM needs the optional package: pip install 'pivotal-sync[msk-iam]'"
            ) from None
        self._signer = MSKAuthTokenProvider
        self.region = region

    async def token(self) -> str:
        # The signer may call STS (a role ARN, web identity): keep it off the event loop.
        try:
            token, _expiry_ms = await asyncio.to_thread(
                self._signer.generate_auth_token, self.region
            )
        except Exception as exc:
            raise TokenUnavailable(
                f"no AWS credentials to sign an MSK IAM token ({type(exc).__name__}): give the "
                "pod an IAM role (IRSA) or AWS_* credentials"
            ) from None
        return str(token)


def msk_region(bootstrap_servers: str) -> str | None:
    """The AWS region of an MSK bootstrap address, else AWS_REGION / AWS_DEFAULT_REGION."""
    for server in bootstrap_servers.split(","):
        match = MSK_HOST.search(server.strip())
        if match:
            return match.group(1)
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
