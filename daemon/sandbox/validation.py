"""Request-body validation in the manner of Zod, which Pivotal validates with.

One table of writable fields per resource; `validate` walks a body against it and raises the
first problem as a 400 with Zod's issue code and the field path. Unknown fields are stripped
(Zod's default), never rejected. `Rules` are the knobs the admin API can turn at run time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.sandbox.errors import bad_request

CUSTOMER_STATUSES = ("onboarding", "active", "at_risk", "churned", "archived")
PHASES = (
    "before_getting_started",
    "program_design",
    "review",
    "program_buildout",
    "internal_qa",
    "launch",
    "completed",
)
STATES = ("active", "paused", "at_risk", "waiting")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")

# Field kinds: "string", "string?" (nullable), "integer?", "boolean", "object", "labels",
# "email?", or a tuple of enum values.
FieldKind = str | tuple[str, ...]

CUSTOMER_FIELDS: dict[str, FieldKind] = {
    "name": "name",
    "slug": "slug",
    "domain": "string?",
    "status": CUSTOMER_STATUSES,
    "plan": "string?",
    "mrr": "integer?",
    "monthly_orders": "integer?",
    "hubspot_company_id": "string?",
    "hubspot_deal_id": "string?",
    "stripe_customer_id": "string?",
    "intercom_company_id": "string?",
    "slack_channel_id": "string?",
    "metadata": "object",
}
CONTACT_FIELDS: dict[str, FieldKind] = {
    "name": "name",
    "email": "email?",
    "title": "string?",
    "is_primary": "boolean",
    "labels": "labels",
    "metadata": "object",
}
ONBOARDING_FIELDS: dict[str, FieldKind] = {
    "customer_id": "string",
    "name": "string?",
    "template_id": "string?",
    "phase": PHASES,
    "state": STATES,
    "target_launch_date": "string?",
    "csm_id": "string?",
    "se_id": "string?",
    "designer_id": "string?",
    "product_ops_id": "string?",
    "notes": "string?",
    "waiting_on_customer": "boolean",
    "reminders_enabled": "boolean",
    "reminder_frequency_days": "integer?",
    "metadata": "object",
}
SCHEMAS: dict[str, dict[str, FieldKind]] = {
    "customer": CUSTOMER_FIELDS,
    "contact": CONTACT_FIELDS,
    "onboarding": ONBOARDING_FIELDS,
}


@dataclass(kw_only=True)
class Rules:
    """Validation the operator can tighten or relax while the sandbox runs."""

    # (kind, field) → rejected values, or None to reject the field whatever its value.
    rejected: dict[tuple[str, str], list[Any] | None] = field(default_factory=dict)
    name_max_length: int | None = None  # None: no limit (Pivotal's is unspecified)

    def as_json(self) -> dict[str, Any]:
        return {
            "rejected_fields": [
                {"kind": kind, "field": name, "values": values}
                for (kind, name), values in self.rejected.items()
            ],
            "name_max_length": self.name_max_length,
        }


def js_type(value: object) -> str:
    """The type name Zod reports for a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _invalid_type(path: str, expected: str, value: object) -> Exception:
    return bad_request("invalid_type", f"Expected {expected}, received {js_type(value)}", path)


def _check_string(path: str, value: object, *, nullable: bool, min_length: int = 0) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise _invalid_type(path, "string", value)
    if len(value) < min_length:
        raise bad_request(
            "too_small", f"String must contain at least {min_length} character(s)", path
        )


def _check_enum(path: str, kind: tuple[str, ...], value: object) -> None:
    if not isinstance(value, str) or value not in kind:
        expected = " | ".join(f"'{option}'" for option in kind)
        raise bad_request(
            "invalid_enum_value",
            f"Invalid enum value. Expected {expected}, received '{value}'",
            path,
        )


def _check_name(path: str, value: object, rules: Rules) -> None:
    _check_string(path, value, nullable=False, min_length=1)
    limit = rules.name_max_length
    if limit is not None and isinstance(value, str) and len(value) > limit:
        raise bad_request("too_big", f"String must contain at most {limit} character(s)", path)


def _check_email(path: str, value: object, rules: Rules) -> None:
    _check_string(path, value, nullable=True)
    if isinstance(value, str) and _EMAIL.fullmatch(value) is None:
        raise bad_request("invalid_string", "Invalid email", path)


def _check_integer(path: str, value: object, rules: Rules) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(path, "number", value)
    if isinstance(value, float) and not value.is_integer():
        raise bad_request("invalid_type", "Expected integer, received float", path)


def _check_boolean(path: str, value: object, rules: Rules) -> None:
    if not isinstance(value, bool):
        raise _invalid_type(path, "boolean", value)


def _check_object(path: str, value: object, rules: Rules) -> None:
    if not isinstance(value, dict):
        raise _invalid_type(path, "object", value)


def _check_labels(path: str, value: object, rules: Rules) -> None:
    if not isinstance(value, list):
        raise _invalid_type(path, "array", value)
    for index, label in enumerate(value):
        if not isinstance(label, str):
            raise _invalid_type(f"{path}.{index}", "string", label)


def _check_required_string(path: str, value: object, rules: Rules) -> None:
    _check_string(path, value, nullable=False, min_length=1)


def _check_nullable_string(path: str, value: object, rules: Rules) -> None:
    _check_string(path, value, nullable=True)


_CHECKS: dict[str, Callable[[str, object, Rules], None]] = {
    "name": _check_name,
    "slug": _check_required_string,
    "string": _check_required_string,
    "string?": _check_nullable_string,
    "email?": _check_email,
    "integer?": _check_integer,
    "boolean": _check_boolean,
    "object": _check_object,
    "labels": _check_labels,
}


def _check_field(path: str, kind: FieldKind, value: object, rules: Rules) -> None:
    if isinstance(kind, tuple):
        _check_enum(path, kind, value)
    else:
        _CHECKS[kind](path, value, rules)


def validate(
    kind: str,
    body: Mapping[str, Any],
    rules: Rules,
    *,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The known fields of `body`, checked; raises the first problem as a 400."""
    for name in required:
        if name not in body:
            raise bad_request("missing_field", f"{name} is required", name)
    schema = SCHEMAS[kind]
    clean: dict[str, Any] = {}
    for name, value in body.items():
        field_kind = schema.get(name)
        if field_kind is None:
            continue  # unknown fields are stripped, as Zod does by default
        _check_field(name, field_kind, value, rules)
        rejected = rules.rejected.get((kind, name), ())
        if rejected is None or (rejected and value in rejected):
            raise bad_request("field_rejected", f"{name} is not accepted: {value!r}", name)
        clean[name] = int(value) if field_kind == "integer?" and value is not None else value
    return clean
