"""What a sandbox is started with: its keys, its window and every (assumed) choice.

Each choice the docs leave open (docs/pivotal-api.md section 8, items marked "(assumed)") is a field
here with the assumed value as default, so a test or a benchmark can flip it; docs/sandbox.md
lists them with their flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

LIVE_KEY_PREFIX = "pivotal_"
TEST_KEY_PREFIX = "pivotal_test_"
LIVE_LIMIT_PER_WINDOW = 60
TEST_LIMIT_PER_WINDOW = 30
PAID_LIMIT_PER_WINDOW = 600
WINDOW_SECONDS = 60.0
IDEMPOTENCY_TTL_SECONDS = 24 * 3600.0
IDEMPOTENCY_KEY_MAX_BYTES = 255
MAX_BODY_BYTES = 1024 * 1024
REQUEST_LOG_SIZE = 10_000
DEFAULT_WORKSPACE = "default"
# Used when `pivotal-sync sandbox` is started without any --key.
DEFAULT_KEYS = ("pivotal_sandbox_live", "pivotal_test_sandbox")

MetadataMerge = Literal["replace", "merge"]
IdempotencyHash = Literal["raw", "json"]
EmailScope = Literal["customer", "workspace"]
SlugCollision = Literal["conflict", "suffix"]


def default_limit(key: str) -> int:
    """The documented per-minute limit for a key's prefix: 30 for test keys, 60 for live."""
    return TEST_LIMIT_PER_WINDOW if key.startswith(TEST_KEY_PREFIX) else LIVE_LIMIT_PER_WINDOW


@dataclass(frozen=True, kw_only=True)
class KeySpec:
    """One API key: its secret, its limit per window and the workspace it is bound to."""

    key: str  # the full secret, e.g. pivotal_test_abcd1234
    limit: int  # requests per sliding window
    workspace: str = DEFAULT_WORKSPACE  # workspace (organization) slug

    def __post_init__(self) -> None:
        if not self.key.startswith(LIVE_KEY_PREFIX) or len(self.key) <= len(LIVE_KEY_PREFIX):
            raise ValueError(f"an API key starts with {LIVE_KEY_PREFIX!r}: {self.key[:12]!r}")
        if self.limit < 0:
            raise ValueError("a key's limit cannot be negative")

    @property
    def is_test(self) -> bool:
        return self.key.startswith(TEST_KEY_PREFIX)

    @property
    def prefix(self) -> str:
        """The visible, loggable part: the mode prefix plus four characters."""
        mode = TEST_KEY_PREFIX if self.is_test else LIVE_KEY_PREFIX
        return self.key[: len(mode) + 4]

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """`KEY[:LIMIT|:paid][@WORKSPACE]`; a key without a limit gets its prefix's default."""
        rest, _, workspace = text.partition("@")
        key, _, limit_text = rest.partition(":")
        if limit_text == "paid":
            limit = PAID_LIMIT_PER_WINDOW
        elif limit_text:
            limit = int(limit_text)
        else:
            limit = default_limit(key)
        return cls(key=key, limit=limit, workspace=workspace or DEFAULT_WORKSPACE)


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    """Start-up settings; runtime changes (faults, limits, rules) go through the admin API."""

    keys: tuple[KeySpec, ...] = tuple(KeySpec.parse(key) for key in DEFAULT_KEYS)
    window_seconds: float = WINDOW_SECONDS  # length of the sliding rate-limit window
    admin_token: str | None = None  # when set, /_sandbox/* needs `Authorization: Bearer TOKEN`
    # --- (assumed) choices, each with its flag in server.py ---
    count_rejected_429: bool = False  # item 15: a 429 does not use the window
    count_4xx: bool = True  # item 15: a 4xx answer does use the window
    count_replays: bool = True  # an idempotent replay costs a request like any other
    metadata_merge: MetadataMerge = "replace"  # item 27: PATCH metadata replaces the object
    idempotency_hash: IdempotencyHash = "raw"  # fingerprint: exact bytes, or canonical JSON
    idempotency_ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS
    email_scope: EmailScope = "customer"  # item 47: e-mails are unique per customer
    derived_slug_collision: SlugCollision = "conflict"  # derived slug taken: 409 or suffix -2
    clamp_limit: bool = False  # item 39: limit > 100 is rejected (400), or clamped to 100
    unsupported_method_status: int = 405  # item 54: PUT and friends → 405 (or 404)
    allow_reopen_completed: bool = False  # item 53: leaving `completed` is a 400
    exclusive_primary_contact: bool = False  # is_primary:true does not demote the old primary
    default_customer_status: str = "onboarding"
    contact_required_fields: tuple[str, ...] = ("name",)
    max_body_bytes: int = MAX_BODY_BYTES  # larger bodies → 400 body_too_large
    request_log_size: int = REQUEST_LOG_SIZE
    error_codes: Mapping[str, str] = field(default_factory=dict)  # rename (assumed) codes
    # Start-up faults, same shape as POST /_sandbox/faults.
    faults: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise ValueError("the window must be longer than zero seconds")
        if self.unsupported_method_status not in (404, 405):
            raise ValueError("unsupported methods answer 404 or 405")
        seen = {spec.key for spec in self.keys}
        if len(seen) != len(self.keys):
            raise ValueError("a key is listed twice")

    def replace(self, **changes: object) -> SandboxConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
