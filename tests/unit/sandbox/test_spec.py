"""The sandbox against docs/pivotal-api.md section 8, one test per behaviour, named by item number.

This module runs in process (tests/unit/sandbox); tests/integration/sandbox/test_spec_http.py
re-runs every test in it over loopback HTTP against a real `pivotal-sync sandbox` process.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from tests.fixtures.sandbox import (
    LIVE_KEY,
    LIVE_KEY_2,
    OTHER_KEY,
    PAID_KEY,
    TEST_KEY,
    SandboxClient,
)

ISO_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
CUID = re.compile(r"c[0-9a-z]{24}")
LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def assert_error(
    response: httpx.Response,
    status: int,
    type_: str,
    code: str | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == type_
    assert isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code
    if field is not None:
        assert error["field"] == field
    return error


async def exhaust(api: SandboxClient, key: str = LIVE_KEY, count: int = 60) -> None:
    for _ in range(count):
        assert (await api.get("/me", key=key)).status_code == 200


# --- transport and auth --------------------------------------------------------------------


async def test_item01_resources_live_under_api_v1_with_iso_millisecond_timestamps(
    api: SandboxClient,
) -> None:
    customer = await api.customer()
    assert ISO_MS.fullmatch(customer["created_at"])
    assert ISO_MS.fullmatch(customer["updated_at"])
    assert (
        await api.client.get("/customers", headers={"Authorization": f"Bearer {LIVE_KEY}"})
    ).status_code == 404


async def test_item02_health_needs_no_key(api: SandboxClient) -> None:
    response = await api.get("/health", key=None)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert ISO_MS.fullmatch(response.json()["timestamp"])


async def test_item03_a_request_without_authorization_is_401(api: SandboxClient) -> None:
    assert_error(
        await api.get("/customers", key=None), 401, "authentication_error", "missing_api_key"
    )


@pytest.mark.parametrize(
    "header", [LIVE_KEY, f"Bearer: {LIVE_KEY}", "Bearer", "Basic abc", f"Token {LIVE_KEY}"]
)
async def test_item04_a_header_without_the_bearer_word_is_401(
    api: SandboxClient, header: str
) -> None:
    response = await api.get("/customers", key=None, headers={"Authorization": header})
    assert_error(response, 401, "authentication_error")


async def test_item05_lower_case_bearer_is_accepted(api: SandboxClient) -> None:
    response = await api.get(
        "/customers", key=None, headers={"Authorization": f"bearer {LIVE_KEY}"}
    )
    assert response.status_code == 200


async def test_item06_a_key_in_the_query_string_is_ignored(api: SandboxClient) -> None:
    response = await api.get(f"/customers?api_key={LIVE_KEY}", key=None)
    assert_error(response, 401, "authentication_error")


async def test_item07_a_revoked_key_is_refused_on_the_very_next_request(api: SandboxClient) -> None:
    assert (await api.get("/me")).status_code == 200
    await api.admin.revoke(LIVE_KEY)
    assert_error(await api.get("/me"), 401, "authentication_error", "api_key_revoked")
    await api.admin.restore(LIVE_KEY)
    assert (await api.get("/me")).status_code == 200


async def test_item07_an_unknown_key_is_401(api: SandboxClient) -> None:
    assert_error(
        await api.get("/me", key="pivotal_nobody"), 401, "authentication_error", "invalid_api_key"
    )


async def test_item08_another_workspaces_record_is_404_not_403(api: SandboxClient) -> None:
    customer = await api.customer()
    for ref in (customer["id"], str(customer["display_id"])):
        response = await api.get(f"/customers/{ref}", key=OTHER_KEY)
        assert_error(response, 404, "not_found")
    assert (await api.get("/customers", key=OTHER_KEY)).json()["data"] == []


async def test_item09_me_has_the_documented_shape_and_costs_one_request(api: SandboxClient) -> None:
    first = await api.get("/me")
    second = await api.get("/me")
    body = first.json()
    assert body["object"] == "me"
    assert set(body["api_key"]) >= {"id", "name", "prefix", "scopes", "rate_limit_tier"}
    assert isinstance(body["api_key"]["scopes"], list)
    assert set(body["organization"]) >= {"id", "slug", "name"}
    assert LIVE_KEY.startswith(body["api_key"]["prefix"])
    remaining = int(first.headers["x-ratelimit-remaining"])
    assert int(second.headers["x-ratelimit-remaining"]) == remaining - 1


async def test_item10_no_request_is_ever_answered_403(api: SandboxClient) -> None:
    customer = await api.customer()
    for key in (LIVE_KEY, TEST_KEY, OTHER_KEY):
        for method in ("GET", "PATCH", "DELETE"):
            response = await api.request(method, f"/customers/{customer['id']}", key=key, json={})
            assert response.status_code != 403


# --- rate limiting -------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "limit"), [(LIVE_KEY, 60), (TEST_KEY, 30), (PAID_KEY, 600)])
async def test_item11_each_key_type_has_its_limit(api: SandboxClient, key: str, limit: int) -> None:
    response = await api.get("/me", key=key)
    assert response.headers["x-ratelimit-limit"] == str(limit)
    assert response.headers["x-ratelimit-remaining"] == str(limit - 1)


async def test_item11_two_keys_of_one_workspace_each_get_their_full_quota(
    api: SandboxClient,
) -> None:
    await exhaust(api, LIVE_KEY)
    assert (await api.get("/me")).status_code == 429
    await exhaust(api, LIVE_KEY_2)


async def test_item12_every_response_carries_the_rate_limit_headers(api: SandboxClient) -> None:
    ok = await api.get("/customers")
    client_error = await api.get("/customers/999999")
    await api.admin.set_faults(fail_next=1)
    server_error = await api.get("/customers")
    await exhaust(api, LIVE_KEY, 57)
    limited = await api.get("/customers")
    for response, status in ((ok, 200), (client_error, 404), (server_error, 500), (limited, 429)):
        assert response.status_code == status
        for header in LIMIT_HEADERS:
            assert response.headers[header].isdigit()


async def test_item12_remaining_goes_down_by_one_and_never_below_zero(api: SandboxClient) -> None:
    seen = [
        int((await api.get("/me", key=TEST_KEY)).headers["x-ratelimit-remaining"])
        for _ in range(32)
    ]
    assert seen[:30] == list(range(29, -1, -1))
    assert seen[30:] == [0, 0]


async def test_item12_health_is_exempt_from_the_window(api: SandboxClient) -> None:
    response = await api.get("/health", key=None)
    assert "x-ratelimit-limit" not in response.headers
    assert (await api.get("/me")).headers["x-ratelimit-remaining"] == "59"


async def test_item12_reset_is_when_the_oldest_counted_request_leaves(api: SandboxClient) -> None:
    first = await api.get("/me")
    await api.advance(10)
    later = await api.get("/me")
    assert first.headers["x-ratelimit-reset"] == later.headers["x-ratelimit-reset"]
    now = (await api.client.get("/_sandbox/clock")).json()["now"]
    assert now - 11 < int(first.headers["x-ratelimit-reset"]) - 60 <= now - 9


async def test_item13_the_request_after_the_limit_is_a_429_with_retry_after(
    api: SandboxClient,
) -> None:
    await exhaust(api)
    response = await api.get("/me")
    error = assert_error(response, 429, "rate_limit_error", "rate_limited")
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert error["message"] == f"Rate limit exceeded. Retry after {retry_after} seconds."
    assert "field" not in error
    assert response.headers["x-ratelimit-remaining"] == "0"


async def test_item14_after_retry_after_seconds_a_request_succeeds(api: SandboxClient) -> None:
    await exhaust(api)
    retry_after = int((await api.get("/me")).headers["retry-after"])
    await api.advance(retry_after)
    assert (await api.get("/me")).status_code == 200


async def test_item14_the_window_slides_instead_of_resetting(api: SandboxClient) -> None:
    await exhaust(api, LIVE_KEY, 30)
    await api.advance(30)
    await exhaust(api, LIVE_KEY, 30)
    await api.advance(31)  # the first 30 left; the last 30 are still inside
    await exhaust(api, LIVE_KEY, 30)
    assert (await api.get("/me")).status_code == 429


async def test_item15_429s_do_not_count_but_4xx_do(api: SandboxClient) -> None:
    bad = await api.get("/customers/999999")
    assert bad.headers["x-ratelimit-remaining"] == "59"
    await exhaust(api, LIVE_KEY, 59)
    for _ in range(5):
        assert (await api.get("/me")).status_code == 429
    await api.advance(int((await api.get("/me")).headers["retry-after"]))
    assert (await api.get("/me")).status_code == 200


async def test_item16_a_storm_answers_429_with_the_given_retry_after(api: SandboxClient) -> None:
    await api.admin.set_faults(storm={"retry_after": 7, "duration_seconds": 30})
    response = await api.get("/me")
    assert_error(response, 429, "rate_limit_error", "rate_limited")
    assert response.headers["retry-after"] == "7"
    await api.advance(31)
    assert (await api.get("/me")).status_code == 200


async def test_item16_an_injected_500_is_an_internal_error(api: SandboxClient) -> None:
    await api.admin.set_faults(fail_next=2)
    assert_error(await api.get("/me"), 500, "internal_error")
    assert_error(await api.post("/customers", json={"name": "A"}), 500, "internal_error")
    assert (await api.get("/customers")).json()["data"] == []


# --- errors and validation -----------------------------------------------------------------


async def test_item17_every_error_has_the_envelope_and_its_fixed_type(api: SandboxClient) -> None:
    customer = await api.customer(slug="taken")
    cases = [
        (await api.post("/customers", json={}), 400, "invalid_request_error"),
        (await api.get("/me", key=None), 401, "authentication_error"),
        (await api.get("/customers/nope"), 404, "not_found"),
        (await api.post("/customers", json={"name": "B", "slug": "taken"}), 409, "conflict"),
    ]
    await api.admin.set_faults(fail_next=1)
    cases.append((await api.get(f"/customers/{customer['id']}"), 500, "internal_error"))
    await exhaust(api, LIVE_KEY, 60 - 5)
    cases.append((await api.get("/me"), 429, "rate_limit_error"))
    for response, status, type_ in cases:
        assert set(response.json()) == {"error"}
        assert_error(response, status, type_)


async def test_item18_a_customer_without_name_is_missing_field(api: SandboxClient) -> None:
    assert_error(
        await api.post("/customers", json={"slug": "x"}),
        400,
        "invalid_request_error",
        "missing_field",
        "name",
    )


async def test_item19_a_status_outside_the_enum_is_400(api: SandboxClient) -> None:
    response = await api.post("/customers", json={"name": "A", "status": "prospect"})
    assert_error(response, 400, "invalid_request_error", "invalid_enum_value", "status")
    for status in ("onboarding", "active", "at_risk", "churned", "archived"):
        assert (
            await api.post("/customers", json={"name": status, "status": status})
        ).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": "A", "mrr": "lots"}, "mrr"),
        ({"name": "A", "mrr": 1.5}, "mrr"),
        ({"name": "A", "metadata": [1]}, "metadata"),
        ({"name": "A", "domain": False}, "domain"),
    ],
)
async def test_item20_a_wrong_json_type_is_invalid_type_with_the_field_path(
    api: SandboxClient, body: dict[str, Any], field: str
) -> None:
    assert_error(
        await api.post("/customers", json=body), 400, "invalid_request_error", "invalid_type", field
    )


async def test_item20_nested_field_paths_are_dotted(api: SandboxClient) -> None:
    customer = await api.customer()
    response = await api.post(
        f"/customers/{customer['id']}/contacts", json={"name": "A", "labels": ["x", 3]}
    )
    assert_error(response, 400, "invalid_request_error", "invalid_type", "labels.1")


async def test_item21_validation_failures_are_400_never_422(api: SandboxClient) -> None:
    for body in (
        {},
        {"name": ""},
        {"name": "A", "status": 1},
        {"name": "A", "monthly_orders": "x"},
    ):
        assert (await api.post("/customers", json=body)).status_code == 400


# --- customers -----------------------------------------------------------------------------


async def test_item22_create_is_201_with_cuid_display_id_and_derived_slug(
    api: SandboxClient,
) -> None:
    response = await api.post("/customers", json={"name": "Bright Future Tech"})
    assert response.status_code == 201
    body = response.json()
    assert body["object"] == "customer"
    assert CUID.fullmatch(body["id"])
    assert body["display_id"] == 1
    assert body["slug"] == "bright-future-tech"
    assert (await api.customer("Second"))["display_id"] == 2


async def test_item23_an_existing_slug_is_409_slug_taken(api: SandboxClient) -> None:
    await api.customer("Aurora", slug="aurora")
    response = await api.post("/customers", json={"name": "Other", "slug": "aurora"})
    assert_error(response, 409, "conflict", "slug_taken", "slug")
    derived = await api.post("/customers", json={"name": "Aurora"})
    assert_error(derived, 409, "conflict", "slug_taken", "slug")


async def test_item24_the_same_slug_in_another_workspace_is_fine(api: SandboxClient) -> None:
    await api.customer("Aurora", slug="aurora")
    assert (
        await api.post("/customers", key=OTHER_KEY, json={"name": "A", "slug": "aurora"})
    ).status_code == 201


async def test_item25_display_id_and_cuid_find_the_same_record(api: SandboxClient) -> None:
    customer = await api.customer()
    by_display = await api.get(f"/customers/{customer['display_id']}")
    by_id = await api.get(f"/customers/{customer['id']}")
    assert by_display.json() == by_id.json() == customer


async def test_item26_slugs_never_resolve_and_digits_are_display_ids(api: SandboxClient) -> None:
    await api.customer("Aurora", slug="aurora")
    assert_error(await api.get("/customers/aurora"), 404, "not_found")
    assert_error(await api.get("/customers/999999"), 404, "not_found")


async def test_item27_patch_changes_only_the_given_fields_and_bumps_updated_at(
    api: SandboxClient,
) -> None:
    customer = await api.customer(plan="free", metadata={"a": 1, "b": 2})
    response = await api.patch(
        f"/customers/{customer['id']}", json={"plan": "pro", "metadata": {"c": 3}}
    )
    body = response.json()
    assert response.status_code == 200
    assert body["plan"] == "pro"
    assert body["metadata"] == {"c": 3}  # whole-object replace (assumed)
    unchanged = {k: v for k, v in customer.items() if k not in ("plan", "metadata", "updated_at")}
    assert {k: body[k] for k in unchanged} == unchanged
    assert body["updated_at"] > customer["updated_at"]


async def test_item28_delete_is_soft_idempotent_and_hides_the_record(api: SandboxClient) -> None:
    customer = await api.customer()
    contact = (await api.post(f"/customers/{customer['id']}/contacts", json={"name": "C"})).json()
    onboarding = (await api.post("/onboardings", json={"customer_id": customer["id"]})).json()
    first = await api.delete(f"/customers/{customer['id']}")
    second = await api.delete(f"/customers/{customer['display_id']}")
    expected = {
        "object": "deleted",
        "id": customer["id"],
        "display_id": customer["display_id"],
        "deleted": True,
    }
    assert first.status_code == second.status_code == 200
    assert first.json() == expected
    assert first.content == second.content
    assert_error(await api.get(f"/customers/{customer['id']}"), 404, "not_found")
    assert (await api.get("/customers")).json()["data"] == []
    assert (await api.get(f"/contacts/{contact['id']}")).status_code == 200
    assert (await api.get(f"/onboardings/{onboarding['id']}")).status_code == 200
    assert (await api.get("/onboardings")).json()["data"] == []


async def test_item29_metadata_round_trips_and_cannot_filter(api: SandboxClient) -> None:
    metadata = {"external_id": "crm-1", "nested": {"list": [1, "two", None]}, "test": True}
    created = await api.customer("A", metadata=metadata)
    other = await api.customer("B", metadata={"external_id": "crm-2"})
    assert (await api.get(f"/customers/{created['id']}")).json()["metadata"] == metadata
    listed = await api.get("/customers?metadata.external_id=crm-1&external_id=crm-1&bogus=1")
    assert [item["id"] for item in listed.json()["data"]] == [other["id"], created["id"]]
    assert listed.json()["data"][1]["metadata"] == metadata


# --- idempotency ---------------------------------------------------------------------------


async def test_item30_a_repeat_with_the_same_key_and_body_replays_byte_for_byte(
    api: SandboxClient,
) -> None:
    body = {"name": "Aurora", "slug": "aurora"}
    first = await api.post("/customers", json=body, headers={"Idempotency-Key": "K"})
    second = await api.post("/customers", json=body, headers={"Idempotency-Key": "K"})
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert len((await api.get("/customers")).json()["data"]) == 1
    assert "idempotent-replayed" not in second.headers


async def test_item31_the_same_key_with_another_body_is_409(api: SandboxClient) -> None:
    await api.post("/customers", json={"name": "A"}, headers={"Idempotency-Key": "K"})
    response = await api.post("/customers", json={"name": "B"}, headers={"Idempotency-Key": "K"})
    assert_error(response, 409, "conflict", "idempotency_key_reused")
    assert len((await api.get("/customers")).json()["data"]) == 1


async def test_item32_the_same_key_on_another_endpoint_is_independent(api: SandboxClient) -> None:
    customer = (
        await api.post("/customers", json={"name": "A"}, headers={"Idempotency-Key": "K"})
    ).json()
    response = await api.post(
        "/onboardings", json={"customer_id": customer["id"]}, headers={"Idempotency-Key": "K"}
    )
    assert response.status_code == 201


async def test_item33_the_same_key_in_another_workspace_is_independent(api: SandboxClient) -> None:
    body = {"name": "A"}
    mine = await api.post("/customers", json=body, headers={"Idempotency-Key": "K"})
    theirs = await api.post(
        "/customers", key=OTHER_KEY, json=body, headers={"Idempotency-Key": "K"}
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine.json()["id"]


async def test_item34_a_concurrent_request_with_the_same_key_is_409_in_progress(
    api: SandboxClient,
) -> None:
    headers = {"Idempotency-Key": "K"}
    async with api.creates_held():
        first = asyncio.create_task(api.post("/customers", json={"name": "A"}, headers=headers))
        await api.wait_in_flight()
        second = await api.post("/customers", json={"name": "A"}, headers=headers)
    assert_error(second, 409, "conflict", "idempotency_request_in_progress")
    original = await first
    retry = await api.post("/customers", json={"name": "A"}, headers=headers)
    assert original.status_code == retry.status_code == 201
    assert retry.content == original.content


async def test_item35_a_failed_request_is_not_cached(api: SandboxClient) -> None:
    headers = {"Idempotency-Key": "K"}
    assert (
        await api.post("/customers", json={"name": "A", "status": "x"}, headers=headers)
    ).status_code == 400
    await api.admin.set_faults(fail_next=1)
    assert (await api.post("/customers", json={"name": "A"}, headers=headers)).status_code == 500
    assert (await api.post("/customers", json={"name": "A"}, headers=headers)).status_code == 201


async def test_item36_after_24_hours_the_key_is_new(api: SandboxClient) -> None:
    headers = {"Idempotency-Key": "K"}
    first = await api.post("/customers", json={"name": "A", "slug": "a1"}, headers=headers)
    await api.advance(24 * 3600 - 1)
    assert (
        await api.post("/customers", json={"name": "A", "slug": "a1"}, headers=headers)
    ).content == first.content
    await api.advance(2)
    again = await api.post("/customers", json={"name": "A", "slug": "a1"}, headers=headers)
    assert_error(again, 409, "conflict", "slug_taken")  # it really ran again
    fresh = await api.post("/customers", json={"name": "B"}, headers=headers)
    assert fresh.status_code == 201


async def test_item37_a_key_over_255_bytes_is_400(api: SandboxClient) -> None:
    response = await api.post(
        "/customers", json={"name": "A"}, headers={"Idempotency-Key": "k" * 256}
    )
    assert_error(response, 400, "invalid_request_error")
    assert (
        await api.post("/customers", json={"name": "A"}, headers={"Idempotency-Key": "k" * 255})
    ).status_code == 201


async def test_item38_the_key_is_ignored_on_get_patch_and_delete(api: SandboxClient) -> None:
    customer = await api.customer()
    headers = {"Idempotency-Key": "K" * 300}
    path = f"/customers/{customer['id']}"
    assert (await api.get(path, headers=headers)).status_code == 200
    assert (await api.patch(path, json={"plan": "a"}, headers=headers)).json()["plan"] == "a"
    assert (await api.patch(path, json={"plan": "b"}, headers=headers)).json()["plan"] == "b"
    assert (await api.delete(path, headers=headers)).status_code == 200


# --- pagination and filters ----------------------------------------------------------------


async def test_item39_lists_are_newest_first_with_default_and_maximum_limits(
    api: SandboxClient,
) -> None:
    ids = [(await api.customer(f"c{i}"))["id"] for i in range(22)]
    for _ in range(26):
        await api.post("/onboardings", json={"customer_id": ids[0]})
    page = (await api.get("/customers")).json()
    assert set(page) == {"object", "data", "has_more", "next_cursor"}
    assert page["object"] == "list"
    assert [item["id"] for item in page["data"]] == ids[::-1][:20]
    assert len((await api.get("/onboardings")).json()["data"]) == 25
    assert len((await api.get("/customers?limit=100")).json()["data"]) == 22
    assert_error(await api.get("/customers?limit=101"), 400, "invalid_request_error", field="limit")


async def test_item40_cursor_walks_strictly_older_pages_to_the_end(api: SandboxClient) -> None:
    ids = [(await api.customer(f"c{i}"))["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        page = (
            await api.get(
                "/customers", params={"limit": 3, **({"cursor": cursor} if cursor else {})}
            )
        ).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        assert page["next_cursor"] == page["data"][-1]["created_at"]
        cursor = page["next_cursor"]
    assert seen == ids[::-1]


async def test_item41_a_garbage_cursor_is_invalid_string(api: SandboxClient) -> None:
    error = assert_error(
        await api.get("/customers?cursor=garbage"),
        400,
        "invalid_request_error",
        "invalid_string",
        "cursor",
    )
    assert error["message"] == "Invalid datetime"


async def test_item42_no_results_is_an_empty_list(api: SandboxClient) -> None:
    body = (await api.get("/customers")).json()
    assert body == {"object": "list", "data": [], "has_more": False, "next_cursor": None}


async def test_item43_status_and_slug_filter_before_pagination(api: SandboxClient) -> None:
    active = [(await api.customer(f"a{i}", status="active"))["id"] for i in range(3)]
    for i in range(5):
        await api.customer(f"o{i}", status="onboarding")
    page = (await api.get("/customers?status=active&limit=2")).json()
    assert [item["id"] for item in page["data"]] == active[::-1][:2]
    assert page["has_more"] is True
    found = (await api.get("/customers?slug=a1")).json()["data"]
    assert [item["id"] for item in found] == [active[1]]


async def test_item44_onboardings_filter_by_customer_phase_and_waiting_state(
    api: SandboxClient,
) -> None:
    first, second = await api.customer("A"), await api.customer("B")
    plain = (await api.post("/onboardings", json={"customer_id": first["id"]})).json()
    review = (
        await api.post(
            "/onboardings", json={"customer_id": str(second["display_id"]), "phase": "review"}
        )
    ).json()
    waiting = (
        await api.post(
            "/onboardings", json={"customer_id": first["id"], "waiting_on_customer": True}
        )
    ).json()

    async def ids(query: str) -> list[str]:
        return [item["id"] for item in (await api.get(f"/onboardings?{query}")).json()["data"]]

    assert await ids(f"customer_id={first['display_id']}") == [waiting["id"], plain["id"]]
    assert await ids(f"customer_id={second['id']}") == [review["id"]]
    assert await ids("phase=review") == [review["id"]]
    assert await ids("state=waiting") == [waiting["id"]]
    assert_error(
        await api.get("/onboardings?phase=nope"), 400, "invalid_request_error", field="phase"
    )


async def test_item45_soft_deleted_records_never_appear_in_lists(api: SandboxClient) -> None:
    customer = await api.customer()
    contact = (await api.post(f"/customers/{customer['id']}/contacts", json={"name": "C"})).json()
    onboarding = (await api.post("/onboardings", json={"customer_id": customer["id"]})).json()
    await api.delete(f"/contacts/{contact['id']}")
    await api.delete(f"/onboardings/{onboarding['id']}")
    assert (await api.get(f"/customers/{customer['id']}/contacts")).json()["data"] == []
    assert (await api.get(f"/customers/{customer['id']}/onboardings")).json()["data"] == []
    assert (await api.get("/onboardings")).json()["data"] == []


# --- contacts ------------------------------------------------------------------------------


async def test_item46_a_contact_is_201_with_lower_cased_email_and_defaults(
    api: SandboxClient,
) -> None:
    customer = await api.customer()
    response = await api.post(
        f"/customers/{customer['display_id']}/contacts",
        json={"name": "Ana", "email": "Ana@Example.COM"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["object"] == "contact"
    assert body["customer_id"] == customer["id"]
    assert body["email"] == "ana@example.com"
    assert body["is_primary"] is False
    assert body["labels"] == []


async def test_item47_a_duplicate_email_per_customer_is_409_email_taken(api: SandboxClient) -> None:
    first, second = await api.customer("A"), await api.customer("B")
    await api.post(f"/customers/{first['id']}/contacts", json={"name": "Ana", "email": "ana@x.io"})
    response = await api.post(
        f"/customers/{first['id']}/contacts", json={"name": "Ana", "email": "ANA@x.io"}
    )
    assert_error(response, 409, "conflict", "email_taken", "email")
    other = await api.post(
        f"/customers/{second['id']}/contacts", json={"name": "Ana", "email": "ana@x.io"}
    )
    assert other.status_code == 201


async def test_item48_a_contact_for_a_missing_or_deleted_customer_is_404(
    api: SandboxClient,
) -> None:
    customer = await api.customer()
    await api.delete(f"/customers/{customer['id']}")
    for ref in (customer["id"], "424242", "cnotacustomer000000000000"):
        assert_error(
            await api.post(f"/customers/{ref}/contacts", json={"name": "A"}), 404, "not_found"
        )


async def test_item49_contacts_follow_the_id_patch_and_delete_rules(api: SandboxClient) -> None:
    customer = await api.customer()
    contact = (
        await api.post(f"/customers/{customer['id']}/contacts", json={"name": "A", "title": "CTO"})
    ).json()
    assert (await api.get(f"/contacts/{contact['display_id']}")).json() == contact
    patched = (await api.patch(f"/contacts/{contact['id']}", json={"email": "B@X.IO"})).json()
    assert patched["email"] == "b@x.io"
    assert patched["title"] == "CTO"
    assert patched["updated_at"] > contact["updated_at"]
    first = await api.delete(f"/contacts/{contact['id']}")
    assert (await api.delete(f"/contacts/{contact['id']}")).content == first.content
    assert_error(await api.get(f"/contacts/{contact['id']}"), 404, "not_found")
    assert_error(await api.get("/contacts/some-slug"), 404, "not_found")


# --- onboardings ---------------------------------------------------------------------------


async def test_item50_an_onboarding_is_201_with_the_documented_defaults(api: SandboxClient) -> None:
    customer = await api.customer()
    response = await api.post("/onboardings", json={"customer_id": customer["id"]})
    assert response.status_code == 201
    body = response.json()
    assert (body["phase"], body["state"], body["customer_id"]) == (
        "before_getting_started",
        "active",
        customer["id"],
    )
    assert body["reminders_enabled"] is True
    assert body["reminder_frequency_days"] == 1
    assert_error(await api.post("/onboardings", json={"customer_id": "999"}), 404, "not_found")
    assert_error(
        await api.post("/onboardings", json={}),
        400,
        "invalid_request_error",
        "missing_field",
        "customer_id",
    )


@pytest.mark.parametrize(
    "body", [{"phase": "kickoff"}, {"state": "blocked"}, {"state": "done"}, {"phase": 3}]
)
async def test_item51_phase_and_state_accept_only_their_enums(
    api: SandboxClient, body: dict[str, Any]
) -> None:
    customer = await api.customer()
    response = await api.post("/onboardings", json={"customer_id": customer["id"], **body})
    assert_error(response, 400, "invalid_request_error", field=next(iter(body)))


async def test_item52_patching_a_deleted_onboarding_is_onboarding_not_found(
    api: SandboxClient,
) -> None:
    customer = await api.customer()
    onboarding = (await api.post("/onboardings", json={"customer_id": customer["id"]})).json()
    await api.delete(f"/onboardings/{onboarding['id']}")
    response = await api.patch(f"/onboardings/{onboarding['id']}", json={"phase": "review"})
    assert_error(response, 404, "not_found", "onboarding_not_found")


async def test_item53_completed_is_terminal(api: SandboxClient) -> None:
    customer = await api.customer()
    onboarding = (await api.post("/onboardings", json={"customer_id": customer["id"]})).json()
    path = f"/onboardings/{onboarding['id']}"
    done = (await api.patch(path, json={"phase": "completed"})).json()
    assert done["completed_at"] is not None
    assert_error(
        await api.patch(path, json={"phase": "launch"}), 400, "invalid_request_error", field="phase"
    )
    assert (await api.patch(path, json={"notes": "still editable"})).status_code == 200


# --- misc ----------------------------------------------------------------------------------


async def test_item54_put_is_405_with_the_error_envelope(api: SandboxClient) -> None:
    customer = await api.customer()
    response = await api.request("PUT", f"/customers/{customer['id']}", json={"name": "X"})
    assert response.status_code == 405
    assert set(response.json()["error"]) >= {"type", "code", "message"}
    assert (await api.get(f"/customers/{customer['id']}")).json()["name"] == customer["name"]


async def test_item54_unknown_routes_are_404_with_the_envelope(api: SandboxClient) -> None:
    assert_error(await api.get("/tasks"), 404, "not_found")
    assert_error(await api.post("/customers/1/tasks", json=[]), 404, "not_found")


async def test_item55_no_request_id_or_replay_header_is_sent(api: SandboxClient) -> None:
    response = await api.post("/customers", json={"name": "A"}, headers={"Idempotency-Key": "K"})
    replay = await api.post("/customers", json={"name": "A"}, headers={"Idempotency-Key": "K"})
    for headers in (response.headers, replay.headers):
        assert "x-request-id" not in headers
        assert "idempotent-replayed" not in headers


async def test_item56_a_test_key_shares_data_and_validation_with_live_keys(
    api: SandboxClient,
) -> None:
    created = (await api.post("/customers", key=TEST_KEY, json={"name": "From test"})).json()
    assert (await api.get(f"/customers/{created['id']}", key=LIVE_KEY)).json() == created
    assert_error(
        await api.post("/customers", key=TEST_KEY, json={}),
        400,
        "invalid_request_error",
        "missing_field",
    )
    assert (await api.get("/me", key=TEST_KEY)).headers["x-ratelimit-limit"] == "30"
