"""The demo's Debezium-shaped stream, read through its own mapping, describes the same CRM as
the CloudEvents sample stream it was made from (so `make demo DEMO_ARGS=--format debezium`
checks the daemon against the right expected state)."""

from __future__ import annotations

from daemon.errors import InvalidEventError
from daemon.events import Action, EntityKind, Event, RecordRef
from daemon.formats.mapping import parse_mapping
from devtools.debezium_stream import TABLES, debezium_stream, mapping_yaml
from devtools.sample_stream import ExpectedState, StreamSpec, expected_state, generate


def test_debezium_stream_gives_the_cloudevents_streams_state() -> None:
    """Decoded with the mapping and applied in order, the three tables end where the events do."""
    spec = StreamSpec(customers=40, malformed=5, seed=3, customer_delete_fraction=0)
    messages = generate(spec)
    stream = debezium_stream(messages)
    topics = {kind: f"crm.public.{TABLES[kind]}" for kind in EntityKind}
    mapping = parse_mapping(mapping_yaml(topics), "demo-mapping.yaml")
    state, invalid, skipped = ExpectedState(), 0, 0
    for kind, records in stream.tables.items():
        for offset, message in enumerate(records):
            record = RecordRef(
                topic=topics[kind], partition=0, offset=offset, key=message.key, value=message.value
            )
            try:
                decoded = mapping.decode(record)
            except InvalidEventError:
                invalid += 1
                continue
            if not isinstance(decoded, Event):
                skipped += 1
                continue
            table = state.table(decoded.entity.kind)
            if decoded.action is Action.DELETE:
                table.pop(decoded.entity.external_id, None)
            else:
                row = table.setdefault(
                    decoded.entity.external_id, {"customer": decoded.customer_external_id}
                )
                row.update(decoded.fields)
    expected = expected_state(messages)
    assert invalid == stream.invalid
    assert skipped > 0  # tombstones, and updates that repeat a value
    for kind in EntityKind:
        assert state.table(kind) == expected.table(kind), kind
