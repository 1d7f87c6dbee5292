"""The Pivotal client: one method per endpoint, errors mapped onto the tree, key kept secret."""

import json

import httpx
import pytest
from pydantic import SecretStr

from daemon.errors import (
    AuthError,
    InFlightConflictError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from daemon.pivotal import ApiResponse, PivotalClient

KEY = "pivotal_live_hidden_key_123"


def client_for(handler: httpx.MockTransport) -> PivotalClient:
    return PivotalClient(
        base_url="https://pivotal.test/api/v1", api_key=SecretStr(KEY), transport=handler
    )


async def test_a_create_sends_the_body_the_key_and_the_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "c1"})

    async with client_for(httpx.MockTransport(handle)) as client:
        response = await client.create_customer({"name": "Aurora"}, "key-1")
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/api/v1/customers"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["idempotency-key"] == "key-1"
    assert json.loads(request.content) == {"name": "Aurora"}
    assert response.ok
    assert response.endpoint == "customers"


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda c: c.update_customer("c1", {"a": 1}), "PATCH", "/api/v1/customers/c1"),
        (lambda c: c.delete_customer("c1"), "DELETE", "/api/v1/customers/c1"),
        (lambda c: c.create_contact("c1", {"a": 1}, "k"), "POST", "/api/v1/customers/c1/contacts"),
        (lambda c: c.update_contact("p1", {"a": 1}), "PATCH", "/api/v1/contacts/p1"),
        (lambda c: c.delete_contact("p1"), "DELETE", "/api/v1/contacts/p1"),
        (lambda c: c.create_onboarding({"a": 1}, "k"), "POST", "/api/v1/onboardings"),
        (lambda c: c.update_onboarding("o1", {"a": 1}), "PATCH", "/api/v1/onboardings/o1"),
        (lambda c: c.delete_onboarding("o1"), "DELETE", "/api/v1/onboardings/o1"),
        (lambda c: c.me(), "GET", "/api/v1/me"),
    ],
)
async def test_each_endpoint_has_its_method_and_path(call, method, path) -> None:  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async with client_for(httpx.MockTransport(handle)) as client:
        await call(client)
    assert (seen[0].method, seen[0].url.path) == (method, path)


async def test_the_slug_lookup_filters_the_list() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.params["slug"] == "aurora"
        return httpx.Response(200, json={"object": "list", "data": [{"id": "c9"}]})

    async with client_for(httpx.MockTransport(handle)) as client:
        response = await client.find_customers_by_slug("aurora")
    assert response.json()["data"][0]["id"] == "c9"


async def test_network_failures_become_transient_errors_without_the_key() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused, headers were {request.headers}")

    async with client_for(httpx.MockTransport(handle)) as client:
        with pytest.raises(TransientError) as caught:
            await client.me()
    assert KEY not in str(caught.value)


def test_the_client_repr_never_shows_the_key() -> None:
    client = client_for(httpx.MockTransport(lambda r: httpx.Response(200)))
    assert KEY not in repr(client)
    assert KEY not in repr(vars(client))  # what a debugger or a crash dump of it would show


def response(status: int, code: str = "", headers: dict[str, str] | None = None) -> ApiResponse:
    body = json.dumps({"error": {"type": "x", "code": code, "message": "m"}}).encode()
    return ApiResponse(
        method="POST", endpoint="customers", status=status, headers=headers or {}, body=body
    )


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "missing_field", PermanentError),
        (404, "not_found", PermanentError),
        (409, "slug_taken", PermanentError),
        (409, "idempotency_request_in_progress", InFlightConflictError),
        (401, "api_key_revoked", AuthError),
        (403, "permission_error", AuthError),
        (408, "", TransientError),
        (422, "", PermanentError),
        (500, "internal_error", TransientError),
        (503, "", TransientError),
    ],
)
def test_statuses_map_onto_the_error_tree(status: int, code: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        response(status, code).raise_for_status()


def test_a_429_carries_retry_after() -> None:
    with pytest.raises(RateLimitedError) as caught:
        response(429, "rate_limited", {"retry-after": "7"}).raise_for_status()
    assert caught.value.retry_after == 7.0
    assert caught.value.retriable


@pytest.mark.parametrize("raw", ["", "soon", "nan"])
def test_an_unusable_retry_after_is_none_so_the_limiter_decides(raw: str) -> None:
    with pytest.raises(RateLimitedError) as caught:
        response(429, headers={"retry-after": raw}).raise_for_status()
    assert caught.value.retry_after is None


def test_an_in_flight_conflict_is_a_transient_error() -> None:
    assert issubclass(InFlightConflictError, TransientError)
    assert InFlightConflictError.retriable


def test_success_raises_nothing_and_exposes_the_code_of_errors() -> None:
    ok = ApiResponse(method="GET", endpoint="me", status=200, headers={}, body=b"{}")
    ok.raise_for_status()
    assert response(409, "slug_taken").error_code == "slug_taken"
