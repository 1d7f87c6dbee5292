"""The Pivotal resources: customers, contacts and onboardings, one small handler per operation.

Handlers are synchronous: they run between two awaits of the pipeline, so each one changes the
store atomically. They raise `ApiError` for every refusal and return `(status, body)`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.sandbox.errors import ApiError, bad_request, conflict, not_found
from daemon.sandbox.ids import iso_ms, parse_iso_us
from daemon.sandbox.runtime import KeyState, Sandbox
from daemon.sandbox.state import Record, Workspace, slug_taken
from daemon.sandbox.validation import CUSTOMER_STATUSES, PHASES, STATES, js_type, validate

MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 20
DEFAULT_ONBOARDING_PAGE_LIMIT = 25  # the list-onboardings reference page says 25

CUSTOMER_DEFAULTS: dict[str, Any] = {
    "name": None,
    "slug": None,
    "domain": None,
    "status": None,
    "plan": None,
    "mrr": None,
    "monthly_orders": None,
    "hubspot_company_id": None,
    "hubspot_deal_id": None,
    "stripe_customer_id": None,
    "intercom_company_id": None,
    "slack_channel_id": None,
    "metadata": {},
}
CONTACT_DEFAULTS: dict[str, Any] = {
    "customer_id": None,
    "name": None,
    "email": None,
    "title": None,
    "is_primary": False,
    "labels": [],
    "metadata": {},
}
ONBOARDING_DEFAULTS: dict[str, Any] = {
    "customer_id": None,
    "name": None,
    "template_id": None,
    "phase": "before_getting_started",
    "state": "active",
    "started_at": None,
    "completed_at": None,
    "target_launch_date": None,
    "csm_id": None,
    "se_id": None,
    "designer_id": None,
    "product_ops_id": None,
    "notes": None,
    "waiting_on_customer": False,
    "reminders_enabled": True,
    "reminder_frequency_days": 1,
    "metadata": {},
}


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _no_constants(text: str) -> object:
    raise ValueError(f"{text} is not JSON")


@dataclass(kw_only=True, slots=True)
class Call:
    """One admitted API request, as a handler sees it."""

    sandbox: Sandbox
    key: KeyState
    workspace: Workspace
    params: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    now: float

    @property
    def now_ms(self) -> int:
        return int(self.now * 1000)

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400 saying why it is not one."""
        try:
            value = json.loads(self.body, parse_float=_finite, parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise bad_request("invalid_json", "Request body is not valid JSON") from exc
        if not isinstance(value, dict):
            raise bad_request("invalid_type", f"Expected object, received {js_type(value)}")
        return value


Handler = Callable[[Call], tuple[int, bytes]]


# --- shared helpers ------------------------------------------------------------------------


def _live(call: Call, kind: str, ref: str) -> Record:
    record = call.sandbox.store.find(call.workspace, kind, ref)
    if record is None or not record.live:
        raise not_found(f"{kind}_not_found", f"{kind.capitalize()} not found")
    return record


def _any(call: Call, kind: str, ref: str) -> Record:
    record = call.sandbox.store.find(call.workspace, kind, ref)
    if record is None:
        raise not_found(f"{kind}_not_found", f"{kind.capitalize()} not found")
    return record


def _page_limit(call: Call, default: int) -> int:
    text = call.query.get("limit")
    if text is None:
        return default
    try:
        number = float(text)
    except ValueError:
        raise bad_request("invalid_type", "Expected number, received nan", "limit") from None
    if not number.is_integer():
        raise bad_request("invalid_type", "Expected integer, received float", "limit")
    if number < 1:
        raise bad_request("too_small", "Number must be greater than or equal to 1", "limit")
    if number > MAX_PAGE_LIMIT:
        if call.sandbox.config.clamp_limit:
            return MAX_PAGE_LIMIT
        raise bad_request("too_big", "Number must be less than or equal to 100", "limit")
    return int(number)


def _enum_filter(call: Call, name: str, values: tuple[str, ...]) -> str | None:
    value = call.query.get(name)
    if value is not None and value not in values:
        expected = " | ".join(f"'{option}'" for option in values)
        raise bad_request(
            "invalid_enum_value",
            f"Invalid enum value. Expected {expected}, received '{value}'",
            name,
        )
    return value


def _page(call: Call, records: Iterable[Record], default_limit: int) -> tuple[int, bytes]:
    """A list page: newest first, strictly older than `cursor`, `next_cursor` the last item's."""
    limit = _page_limit(call, default_limit)
    cursor_us: int | None = None
    cursor = call.query.get("cursor")
    if cursor is not None:
        cursor_us = parse_iso_us(cursor)
        if cursor_us is None:
            raise bad_request("invalid_string", "Invalid datetime", "cursor")
    items: list[dict[str, Any]] = []
    has_more = False
    last: Record | None = None
    for record in records:
        if cursor_us is not None and record.created_ms * 1000 >= cursor_us:
            continue
        if len(items) == limit:
            has_more = True
            break
        items.append(record.data)
        last = record
    next_cursor = last.data["created_at"] if has_more and last is not None else None
    body = {"object": "list", "data": items, "has_more": has_more, "next_cursor": next_cursor}
    return 200, dumps(body)


def _apply(call: Call, record: Record, fields: dict[str, Any]) -> None:
    """A PATCH: only the given fields change; metadata replaces or merges (configurable)."""
    metadata = fields.pop("metadata", None)
    if metadata is not None:
        if call.sandbox.config.metadata_merge == "merge":
            metadata = _deep_merge(record.data.get("metadata") or {}, metadata)
        record.data["metadata"] = metadata
    record.data.update(fields)
    call.sandbox.store.touch(record, call.now_ms)


def _deep_merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for name, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _deep_merge(merged[name], value)
        else:
            merged[name] = value
    return merged


def _delete(call: Call, kind: str) -> tuple[int, bytes]:
    record = _any(call, kind, call.params["id"])
    call.sandbox.store.soft_delete(call.workspace, record, call.now_ms)
    return 200, dumps(record.deleted_body())


# --- meta ----------------------------------------------------------------------------------


def get_me(call: Call) -> tuple[int, bytes]:
    return 200, dumps(call.sandbox.me(call.key))


# --- customers -----------------------------------------------------------------------------


def derive_slug(name: str) -> str:
    """`Bright Future Tech` → `bright-future-tech`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "customer"


def list_customers(call: Call) -> tuple[int, bytes]:
    status = _enum_filter(call, "status", CUSTOMER_STATUSES)
    slug = call.query.get("slug")
    records = (
        record
        for record in call.workspace.newest_first("customer")
        if record.live
        and (status is None or record.data["status"] == status)
        and (slug is None or record.data["slug"] == slug)
    )
    return _page(call, records, DEFAULT_PAGE_LIMIT)


def _free_slug(call: Call, fields: dict[str, Any]) -> str:
    store, workspace = call.sandbox.store, call.workspace
    if "slug" in fields:
        store.claim_slug(workspace, fields["slug"], None)
        return str(fields["slug"])
    slug = derive_slug(fields["name"])
    if slug not in workspace.live_slugs:
        return slug
    if call.sandbox.config.derived_slug_collision == "conflict":
        raise slug_taken(slug)
    suffix = 2
    while f"{slug}-{suffix}" in workspace.live_slugs:
        suffix += 1
    return f"{slug}-{suffix}"


def create_customer(call: Call) -> tuple[int, bytes]:
    fields = validate("customer", call.json_object(), call.sandbox.rules, required=("name",))
    fields["slug"] = _free_slug(call, fields)
    fields.setdefault("status", call.sandbox.config.default_customer_status)
    record = call.sandbox.store.add(
        call.workspace, "customer", call.now_ms, {**CUSTOMER_DEFAULTS, **fields}
    )
    return 201, dumps(record.data)


def get_customer(call: Call) -> tuple[int, bytes]:
    return 200, dumps(_live(call, "customer", call.params["id"]).data)


def update_customer(call: Call) -> tuple[int, bytes]:
    record = _live(call, "customer", call.params["id"])
    fields = validate("customer", call.json_object(), call.sandbox.rules)
    slug = fields.get("slug")
    if slug is not None and slug != record.data["slug"]:
        call.sandbox.store.rename_slug(call.workspace, record, slug)
    _apply(call, record, fields)
    return 200, dumps(record.data)


def delete_customer(call: Call) -> tuple[int, bytes]:
    return _delete(call, "customer")


# --- contacts ------------------------------------------------------------------------------


def _check_email(call: Call, customer_id: str, email: str, itself: Record | None) -> None:
    per_customer = call.sandbox.config.email_scope == "customer"
    for other in call.workspace.records["contact"].values():
        if (
            other.live
            and other is not itself
            and other.data["email"] == email
            and (not per_customer or other.customer_id == customer_id)
        ):
            raise conflict("email_taken", f"A contact with email '{email}' already exists", "email")


def _contact_fields(
    call: Call, fields: dict[str, Any], customer_id: str, itself: Record | None
) -> dict[str, Any]:
    email = fields.get("email")
    if isinstance(email, str):
        fields["email"] = email = email.lower()
        _check_email(call, customer_id, email, itself)
    if fields.get("is_primary") and call.sandbox.config.exclusive_primary_contact:
        for other in call.workspace.records["contact"].values():
            if (
                other.customer_id == customer_id
                and other is not itself
                and other.data["is_primary"]
            ):
                other.data["is_primary"] = False
                call.sandbox.store.touch(other, call.now_ms)
    return fields


def list_contacts(call: Call) -> tuple[int, bytes]:
    customer = _live(call, "customer", call.params["id"])
    records = (
        record
        for record in call.workspace.newest_first("contact")
        if record.live and record.customer_id == customer.id
    )
    return _page(call, records, DEFAULT_PAGE_LIMIT)


def create_contact(call: Call) -> tuple[int, bytes]:
    customer = _live(call, "customer", call.params["id"])
    required = call.sandbox.config.contact_required_fields
    fields = validate("contact", call.json_object(), call.sandbox.rules, required=required)
    fields = _contact_fields(call, fields, customer.id, None)
    values = {**CONTACT_DEFAULTS, "labels": [], **fields, "customer_id": customer.id}
    record = call.sandbox.store.add(call.workspace, "contact", call.now_ms, values)
    return 201, dumps(record.data)


def get_contact(call: Call) -> tuple[int, bytes]:
    return 200, dumps(_live(call, "contact", call.params["id"]).data)


def update_contact(call: Call) -> tuple[int, bytes]:
    record = _live(call, "contact", call.params["id"])
    fields = validate("contact", call.json_object(), call.sandbox.rules)
    _apply(call, record, _contact_fields(call, fields, str(record.customer_id), record))
    return 200, dumps(record.data)


def delete_contact(call: Call) -> tuple[int, bytes]:
    return _delete(call, "contact")


# --- onboardings ---------------------------------------------------------------------------


def _onboarding_state(call: Call, fields: dict[str, Any], record: Record | None) -> None:
    """Keep `waiting_on_customer` in step with `state`, stamp and guard `completed`."""
    if "state" in fields and "waiting_on_customer" not in fields:
        fields["waiting_on_customer"] = fields["state"] == "waiting"
    phase = fields.get("phase")
    current = record.data["phase"] if record is not None else None
    if (
        current == "completed"
        and phase is not None
        and phase != "completed"
        and not call.sandbox.config.allow_reopen_completed
    ):
        raise bad_request(
            "invalid_phase_transition", "completed is terminal: the phase cannot change", "phase"
        )
    if phase == "completed" and current != "completed":
        fields["completed_at"] = iso_ms(call.now_ms)


def list_onboardings(call: Call) -> tuple[int, bytes]:
    phase = _enum_filter(call, "phase", PHASES)
    state = _enum_filter(call, "state", STATES)
    customer_ref = call.query.get("customer_id")
    customer_id: str | None = None
    if customer_ref is not None:
        customer = call.sandbox.store.find(call.workspace, "customer", customer_ref)
        customer_id = customer.id if customer is not None else ""
    return _page(call, _onboardings(call, customer_id, phase, state), DEFAULT_ONBOARDING_PAGE_LIMIT)


def _onboardings(
    call: Call, customer_id: str | None, phase: str | None, state: str | None
) -> Iterable[Record]:
    store = call.sandbox.store
    for record in call.workspace.newest_first("onboarding"):
        data = record.data
        if not record.live or (customer_id is not None and record.customer_id != customer_id):
            continue
        if phase is not None and data["phase"] != phase:
            continue
        if state == "waiting" and not data["waiting_on_customer"]:
            continue
        if state not in (None, "waiting") and data["state"] != state:
            continue
        if store.parent_live(record):
            yield record


def list_customer_onboardings(call: Call) -> tuple[int, bytes]:
    customer = _live(call, "customer", call.params["id"])
    records = _onboardings(call, customer.id, None, None)
    return _page(call, records, DEFAULT_ONBOARDING_PAGE_LIMIT)


def create_onboarding(call: Call) -> tuple[int, bytes]:
    rules = call.sandbox.rules
    fields = validate("onboarding", call.json_object(), rules, required=("customer_id",))
    customer = _live(call, "customer", fields["customer_id"])
    _onboarding_state(call, fields, None)
    values = {**ONBOARDING_DEFAULTS, **fields, "customer_id": customer.id}
    record = call.sandbox.store.add(call.workspace, "onboarding", call.now_ms, values)
    record.data["started_at"] = record.data["created_at"]
    return 201, dumps(record.data)


def get_onboarding(call: Call) -> tuple[int, bytes]:
    return 200, dumps(_live(call, "onboarding", call.params["id"]).data)


def update_onboarding(call: Call) -> tuple[int, bytes]:
    record = _live(call, "onboarding", call.params["id"])
    fields = validate("onboarding", call.json_object(), call.sandbox.rules)
    if "customer_id" in fields:
        fields["customer_id"] = _live(call, "customer", fields["customer_id"]).id
        record.customer_id = fields["customer_id"]
    _onboarding_state(call, fields, record)
    _apply(call, record, fields)
    return 200, dumps(record.data)


def delete_onboarding(call: Call) -> tuple[int, bytes]:
    return _delete(call, "onboarding")


def unknown_route(call: Call) -> tuple[int, bytes]:
    raise ApiError(404, "route_not_found", "No such route")
