"""The in-memory view of the entity map, and the create intents that make POSTs crash-proof.

The entity map in Postgres is the truth; this cache is what the dispatcher consults on every
work (one lookup per request would cost more than the request budget allows). It is filled from
Postgres when an entity is first seen and updated the moment Pivotal answers, so that a child
waiting in the same lane sees its parent's id at once; the durable write follows in the
recorder's next batch.

Why intents: a create's body depends on how many waiting updates were coalesced into it, and
that differs between a run and its restart. If a POST succeeded but the daemon died before its
checkpoint was durable, the restarted daemon would send a *different* body — a new
Idempotency-Key — and create a duplicate. So before the first POST for an entity, the exact
key and body are written to Postgres (the intent); any later attempt, in this process or after a
restart, re-sends that same pair, which Pivotal answers from its idempotency cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.events import EntityKey, EntityKind
from daemon.outcomes import EntityState


@dataclass(frozen=True, kw_only=True, slots=True)
class Intent:
    """A POST that may have been sent: replay exactly this, never a variant."""

    key: EntityKey
    idempotency_key: str
    # The Pivotal id of the parent customer the POST was addressed to (contacts, onboardings).
    parent_id: str | None
    body: Mapping[str, Any] = field(default_factory=dict)


class EntityStore(Protocol):
    async def load_entities(self, keys: list[EntityKey]) -> dict[EntityKey, EntityState]: ...

    async def load_intents(self, keys: list[EntityKey]) -> dict[EntityKey, Intent]: ...


class EntityCache:
    """Entity states and create intents by key."""

    def __init__(self) -> None:
        self._states: dict[EntityKey, EntityState] = {}
        self._intents: dict[EntityKey, Intent] = {}
        self._loaded: set[EntityKey] = set()

    async def load(self, store: EntityStore, keys: Iterable[EntityKey]) -> None:
        """Fetch from Postgres the entities not seen yet (one query each for states, intents)."""
        missing = list({k for k in keys if k not in self._loaded})
        if not missing:
            return
        states = await store.load_entities(missing)
        intents = await store.load_intents(missing)
        for key in missing:
            self._loaded.add(key)
            if key in states:
                self._states[key] = states[key]
            if key in intents:
                self._intents[key] = intents[key]

    def get(self, key: EntityKey) -> EntityState | None:
        return self._states.get(key)

    def put(self, state: EntityState) -> None:
        self._states[state.key] = state
        self._loaded.add(state.key)

    def pivotal_id(self, key: EntityKey) -> str | None:
        state = self._states.get(key)
        if state is None or state.deleted:
            return None
        return state.pivotal_id

    def customer_ready(self, customer_external_id: str) -> bool:
        """A contact or onboarding may go: its customer has a live Pivotal id."""
        key = EntityKey(kind=EntityKind.CUSTOMER, external_id=customer_external_id)
        return self.pivotal_id(key) is not None

    def intent(self, key: EntityKey) -> Intent | None:
        return self._intents.get(key)

    def set_intent(self, intent: Intent) -> None:
        self._intents[intent.key] = intent

    def clear_intent(self, key: EntityKey) -> None:
        self._intents.pop(key, None)

    def forget(self, keys: Iterable[EntityKey]) -> None:
        """Drop what is cached for `keys`; the next `load` reads Postgres again."""
        for key in keys:
            self._states.pop(key, None)
            self._intents.pop(key, None)
            self._loaded.discard(key)

    def __len__(self) -> int:
        return len(self._states)
