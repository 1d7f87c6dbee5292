"""The running sandbox: its keys and their windows, the store, faults, rules and statistics.

`Sandbox` is the one mutable object the routes share. It is rebuilt in place by
POST /_sandbox/reset, back to what the `SandboxConfig` said at start-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daemon.sandbox.clock import Clock, OffsetClock
from daemon.sandbox.config import PAID_LIMIT_PER_WINDOW, KeySpec, SandboxConfig
from daemon.sandbox.errors import ApiError
from daemon.sandbox.faults import Faults, FaultSettings
from daemon.sandbox.ids import new_cuid
from daemon.sandbox.state import Store, Workspace
from daemon.sandbox.stats import Stats
from daemon.sandbox.validation import Rules
from daemon.sandbox.window import SlidingWindow

SCOPES = (
    "read:customers",
    "write:customers",
    "read:contacts",
    "write:contacts",
    "read:onboardings",
    "write:onboardings",
)


@dataclass(kw_only=True)
class KeyState:
    """One API key at run time: its window, whether it is revoked, its identity for /me."""

    spec: KeySpec
    id: str
    window: SlidingWindow
    revoked: bool = False

    @property
    def tier(self) -> str:
        if self.spec.is_test:
            return "test"
        return "paid" if self.window.limit >= PAID_LIMIT_PER_WINDOW else "standard"

    def as_json(self, now: float) -> dict[str, object]:
        state = self.window.state(now)
        return {
            "key": self.spec.key,
            "prefix": self.spec.prefix,
            "workspace": self.spec.workspace,
            "mode": "test" if self.spec.is_test else "live",
            "limit": self.window.limit,
            "remaining": state.remaining,
            "reset": state.reset_epoch,
            "revoked": self.revoked,
        }


class Sandbox:
    """Shared state of one sandbox app."""

    def __init__(self, config: SandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = OffsetClock(clock)
        # A test hook awaited by idempotent creates once they are marked in flight.
        self.before_create: Callable[[], Awaitable[None]] | None = None
        self.reset()

    def reset(self) -> None:
        now = self.clock.now()
        config = self.config
        self.store = Store(config.keys, int(now * 1000))
        self.keys: dict[str, KeyState] = {}
        for spec in config.keys:
            self.add_key(spec)
        self.faults = Faults(FaultSettings.parse(config.faults, now))
        self.rules = Rules()
        self.stats = Stats(config.request_log_size)

    def add_key(self, spec: KeySpec) -> KeyState:
        if spec.key in self.keys:
            raise ApiError(409, "key_exists", "that key is already configured")
        now_ms = int(self.clock.now() * 1000)
        self.store.ensure_workspace(spec.workspace, now_ms)
        state = KeyState(
            spec=spec,
            id=new_cuid(now_ms),
            window=SlidingWindow(spec.limit, self.config.window_seconds),
        )
        self.keys[spec.key] = state
        return state

    def key(self, key: str) -> KeyState:
        state = self.keys.get(key)
        if state is None:
            raise ApiError(404, "key_not_found", "no such key in this sandbox")
        return state

    def workspace_of(self, key: KeyState) -> Workspace:
        return self.store.workspaces[key.spec.workspace]

    def me(self, key: KeyState) -> dict[str, object]:
        workspace = self.workspace_of(key)
        return {
            "object": "me",
            "api_key": {
                "id": key.id,
                "name": f"sandbox {'test' if key.spec.is_test else 'live'} key",
                "prefix": key.spec.prefix,
                "scopes": list(SCOPES),
                "rate_limit_tier": key.tier,
            },
            "organization": {"id": workspace.id, "slug": workspace.slug, "name": workspace.name},
        }
