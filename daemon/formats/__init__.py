"""Input formats: one Kafka record (value, headers, key, topic) → one event, a skip, or an error.

    decoder = Decoders(mapping)            # mapping: a loaded mapping file, or None
    decoder.decode(record) -> Event | Skip # raises InvalidEventError (a dead letter, no request)

A family of interchangeable parts, one module each:

- `cloudevents` — CloudEvents 1.0 over the Kafka protocol binding, structured and binary
  content modes; the built-in contract (docs/events.md) is the default for every topic the
  mapping file does not name.
- `debezium` — Debezium JSON change events, with or without the `schema`/`payload` envelope.
- `mapping` — the declarative mapping file (YAML, JMESPath expressions) that says, per topic,
  which format it carries and how its records become Pivotal fields.

A `Skip` is a record that is fine but asks for nothing (a Debezium tombstone, an update that
changed no mapped field, a record a filter excludes): it is finished as `noop` and costs no
request.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.events import Event, RecordRef

# Why a record was skipped: a closed set (a log field and the detail of its checkpoint row).
SKIP_REASONS = (
    "tombstone",  # a Debezium tombstone: log compaction's marker after a delete
    "unchanged",  # an update that changed none of the mapped fields
    "filtered",  # a `skip_when` filter of the mapping matched
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Skip:
    """A valid record that needs no request; finished as `noop`."""

    reason: str  # one of SKIP_REASONS
    detail: str
    record: RecordRef


Decoded = Event | Skip
