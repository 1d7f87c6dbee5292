"""Beyond section 8: configurable choices, fault injection, the admin API, hostile input."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.sandbox.config import KeySpec, SandboxConfig
from daemon.sandbox.window import SlidingWindow
from tests.fixtures.sandbox import LIVE_KEY, SandboxApp, SandboxClient, in_process, sandbox_config

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def test_window_retry_after_is_when_enough_requests_have_left() -> None:
    window = SlidingWindow(2, 60)
    window.count(100.0)
    window.count(130.0)
    assert window.retry_after(140.0) == 20
    assert window.retry_after(160.0) is None


def test_a_lowered_limit_waits_until_the_count_is_below_it() -> None:
    window = SlidingWindow(2, 60)
    window.count(100.0)
    window.count(130.0)
    window.limit = 1
    assert window.retry_after(140.0) == 50  # both must leave: the newer one at 190


def test_key_spec_parses_limit_paid_and_workspace() -> None:
    assert KeySpec.parse("pivotal_a").limit == 60
    assert KeySpec.parse("pivotal_test_a").limit == 30
    assert KeySpec.parse("pivotal_a:paid").limit == 600
    spec = KeySpec.parse("pivotal_a:5@globex")
    assert (spec.limit, spec.workspace) == (5, "globex")
    with pytest.raises(ValueError, match="starts with"):
        KeySpec.parse("sk_live_a")


async def test_rejected_429s_can_be_counted() -> None:
    async with in_process(sandbox_config(count_rejected_429=True)) as app:
        for _ in range(60):
            await app.api.get("/me")
        app.clock.advance(1)
        assert (await app.api.get("/me")).status_code == 429
        app.clock.advance(59)  # the 60 successes left, the 429 has not
        assert (await app.api.get("/me")).headers["x-ratelimit-remaining"] == "58"


async def test_4xx_answers_can_be_free() -> None:
    async with in_process(sandbox_config(count_4xx=False)) as app:
        assert (await app.api.get("/customers/999")).headers["x-ratelimit-remaining"] == "60"


async def test_metadata_can_merge_instead_of_replace() -> None:
    async with in_process(sandbox_config(metadata_merge="merge")) as app:
        customer = await app.api.customer(metadata={"a": {"x": 1}, "b": 2})
        response = await app.api.patch(
            f"/customers/{customer['id']}", json={"metadata": {"a": {"y": 2}}}
        )
        assert response.json()["metadata"] == {"a": {"x": 1, "y": 2}, "b": 2}


async def test_put_can_answer_404_instead_of_405() -> None:
    async with in_process(sandbox_config(unsupported_method_status=404)) as app:
        assert (await app.api.request("PUT", "/customers/1", json={})).status_code == 404


async def test_limit_over_100_can_be_clamped() -> None:
    async with in_process(sandbox_config(clamp_limit=True)) as app:
        assert (await app.api.get("/customers?limit=500")).status_code == 200


async def test_derived_slug_collisions_can_get_a_suffix() -> None:
    async with in_process(sandbox_config(derived_slug_collision="suffix")) as app:
        await app.api.customer("Aurora")
        assert (await app.api.customer("Aurora"))["slug"] == "aurora-2"


async def test_assumed_codes_can_be_renamed() -> None:
    async with in_process(sandbox_config(error_codes={"missing_api_key": "unauthorized"})) as app:
        response = await app.api.get("/me", key=None)
        assert response.json()["error"]["code"] == "unauthorized"


async def test_latency_fault_delays_admitted_requests(
    api: SandboxClient, sandbox_app: SandboxApp
) -> None:
    settings_ = await api.admin.set_faults(latency_ms=5, latency_jitter_ms=2, seed=1)
    assert settings_["latency_ms"] == 5
    assert sandbox_app.sandbox.faults.latency_seconds() > 0


async def test_error_rate_and_503_status(api: SandboxClient) -> None:
    await api.admin.set_faults(error_rate=1.0, error_status=503)
    response = await api.get("/me")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "internal_error"
    await api.admin.clear_faults()
    assert (await api.get("/me")).status_code == 200


async def test_faults_can_target_one_endpoint(api: SandboxClient) -> None:
    await api.admin.set_faults(error_rate=1.0, endpoints=["POST /customers"])
    assert (await api.get("/customers")).status_code == 200
    assert (await api.post("/customers", json={"name": "A"})).status_code == 500


async def test_a_dropped_connection_raises_a_transport_error(api: SandboxClient) -> None:
    await api.admin.set_faults(drop_next=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await api.get("/me")
    assert (await api.get("/me")).status_code == 200


async def test_drop_after_commit_creates_the_record_but_loses_the_reply(api: SandboxClient) -> None:
    await api.admin.set_faults(drop_next=1, drop_after_commit=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await api.post("/customers", json={"name": "A"}, headers={"Idempotency-Key": "K"})
    retry = await api.post("/customers", json={"name": "A"}, headers={"Idempotency-Key": "K"})
    assert retry.status_code == 201
    assert len((await api.admin.records())["customers"]) == 1


async def test_bad_fault_settings_are_400(api: SandboxClient) -> None:
    for payload in ({"error_rate": 2}, {"bogus": 1}, {"storm": {"retry_after": 0}}):
        response = await api.client.post("/_sandbox/faults", json=payload)
        assert response.status_code == 400


async def test_stats_count_routes_statuses_keys_and_duplicates(api: SandboxClient) -> None:
    await api.customer("A", metadata={"external_id": "crm-1"})
    await api.customer("B", metadata={"external_id": "crm-1"})
    await api.customer("C", metadata={"external_id": "crm-2"})
    for _ in range(60):
        await api.get("/me")
    stats = await api.admin.stats()
    assert stats["by_endpoint_status"]["POST /customers"] == {"201": 3}
    assert stats["rate_limited_total"] == 3
    assert stats["keys"][LIVE_KEY]["requests"] == 63
    assert stats["keys"][LIVE_KEY]["rate_limited"] == 3
    [duplicate] = stats["duplicates"]
    assert (duplicate["kind"], duplicate["external_id"], duplicate["count"]) == (
        "customer",
        "crm-1",
        2,
    )


async def test_records_show_deleted_ones_and_requests_are_logged(api: SandboxClient) -> None:
    customer = await api.customer()
    await api.delete(f"/customers/{customer['id']}")
    records = await api.admin.records()
    assert records["customers"][0]["deleted_at"] is not None
    log = (await api.client.get("/_sandbox/requests")).json()["requests"]
    assert [entry["method"] for entry in log] == ["POST", "DELETE"]
    assert log[0]["body"] == {"name": "Aurora Outfitters"}


async def test_reset_forgets_records_windows_faults_and_revocations(api: SandboxClient) -> None:
    await api.customer()
    await api.admin.revoke(LIVE_KEY)
    await api.admin.set_faults(error_rate=1.0)
    await api.admin.reset()
    assert (await api.get("/customers")).json()["data"] == []


async def test_a_key_limit_can_change_mid_run(api: SandboxClient) -> None:
    await api.admin.set_limit(LIVE_KEY, 2)
    assert [(await api.get("/me")).status_code for _ in range(3)] == [200, 200, 429]
    await api.admin.set_limit(LIVE_KEY, 600)
    assert (await api.get("/me")).headers["x-ratelimit-limit"] == "600"


async def test_keys_can_be_added_at_run_time(api: SandboxClient) -> None:
    await api.client.post(
        "/_sandbox/keys", json={"key": "pivotal_new_key1", "limit": 5, "workspace": "new"}
    )
    response = await api.get("/me", key="pivotal_new_key1")
    assert response.json()["organization"]["slug"] == "new"
    assert response.headers["x-ratelimit-limit"] == "5"


async def test_rules_reject_a_field_and_can_be_relaxed(api: SandboxClient) -> None:
    await api.client.post(
        "/_sandbox/rules", json={"reject_field": "plan", "values": ["enterprise"]}
    )
    response = await api.post("/customers", json={"name": "A", "plan": "enterprise"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "plan"
    assert (await api.post("/customers", json={"name": "B", "plan": "pro"})).status_code == 201
    await api.client.post("/_sandbox/rules", json={"relax_field": "plan"})
    assert (
        await api.post("/customers", json={"name": "C", "plan": "enterprise"})
    ).status_code == 201


async def test_rules_can_cap_the_name_length(api: SandboxClient) -> None:
    await api.client.post("/_sandbox/rules", json={"name_max_length": 3})
    assert (await api.post("/customers", json={"name": "Long"})).json()["error"][
        "code"
    ] == "too_big"
    await api.client.delete("/_sandbox/rules")
    assert (await api.post("/customers", json={"name": "Long"})).status_code == 201


async def test_the_admin_token_guards_the_admin_api() -> None:
    async with in_process(sandbox_config(admin_token="s3cret")) as app:
        assert (await app.api.client.get("/_sandbox/stats")).status_code == 401
        ok = await app.api.client.get("/_sandbox/stats", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"[1,2]",
        b"null",
        b'"x"',
        b"",
        b"\xff\xfe",
        b"NaN",
        b'{"name": 1e999}',
        b"[" * 100_000,
        b"1" * 5000,
    ],
)
async def test_malformed_bodies_are_400_never_500(api: SandboxClient, content: bytes) -> None:
    for path in ("/customers", "/onboardings"):
        response = await api.post(path, content=content)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_a_body_over_the_limit_is_400_body_too_large(api: SandboxClient) -> None:
    response = await api.post("/customers", content=b" " * (1024 * 1024 + 1))
    assert response.json()["error"]["code"] == "body_too_large"


async def test_odd_paths_and_queries_are_never_500(api: SandboxClient) -> None:
    customer = await api.customer()
    for path in (
        "/customers/%00",
        "/customers/٣",
        "/customers?limit=-1",
        "/customers?limit=1e9",
        "/customers?cursor=2026-13-45T00:00:00Z",
        "/onboardings?customer_id=nope",
        f"/customers/{customer['id']}/contacts?limit=abc",
    ):
        assert (await api.get(path)).status_code < 500


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "slug",
                "status",
                "mrr",
                "metadata",
                "email",
                "labels",
                "phase",
                "state",
                "customer_id",
                "is_primary",
            ]
        ),
        JSON,
        max_size=6,
    )
)
async def test_any_json_body_is_answered_below_500(body: dict[str, Any]) -> None:
    async with in_process(SandboxConfig(keys=(KeySpec.parse(f"{LIVE_KEY}:100000"),))) as app:
        customer = await app.api.customer()
        for path in ("/customers", f"/customers/{customer['id']}/contacts", "/onboardings"):
            response = await app.api.post(path, content=json.dumps(body).encode())
            assert response.status_code < 500
        response = await app.api.patch(f"/customers/{customer['id']}", content=json.dumps(body))
        assert response.status_code < 500
