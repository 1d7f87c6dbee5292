"""Event ids admitted into the pipeline and not durable yet, and the copies waiting on them.

Intake adds an id when it admits an event; the recorder settles it once its outcome is durable.
A second copy of an id still in the pipeline (the CRM published it twice, a redrive raced the
original) waits here instead of being admitted: it gets no checkpoint row of its own, because a
"duplicate" row written before the original's outcome would, after a crash, make the restart
skip the original — a lost event. When the original is durable, its copies are finished as
duplicates (no request): the checkpoint table answers for them from then on.

Built before both of its users, so neither needs a callback into the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from daemon.events import RecordRef
from daemon.outcomes import Finished, Outcome


class Admitted:
    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._copies: dict[str, list[RecordRef]] = {}

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids.add(event_id)

    def hold_copy(self, event_id: str, record: RecordRef) -> None:
        """A later record with the id of an admitted event: it waits for the original."""
        self._copies.setdefault(event_id, []).append(record)

    def settle(self, durable: Sequence[Finished]) -> list[Finished]:
        """Outcomes that are durable now: their ids leave the pipeline, and the copies that
        waited on them come back finished as duplicates (durable already, through the
        original's checkpoint row)."""
        released: list[Finished] = []
        for item in durable:
            self._ids.discard(item.event_id)
            released += [
                Finished(
                    event_id=item.event_id,
                    record=record,
                    outcome=Outcome.DUPLICATE,
                    entity=item.entity,
                )
                for record in self._copies.pop(item.event_id, ())
            ]
        return released

    def drop(self, event_ids: Iterable[str]) -> None:
        """Events dropped unfinished (their partition was revoked): no longer admitted, and
        their copies go too (the next owner of the partition reads them again)."""
        for event_id in event_ids:
            self._ids.discard(event_id)
            self._copies.pop(event_id, None)
