"""CloudEvents 1.0 over Kafka: the structured and binary content modes of the protocol binding.

    read_cloudevent(record) -> dict      the event in structured form (attributes + `data`)
    decode_builtin(record) -> Event      the built-in contract (docs/events.md)

Structured mode: the value is the whole event as JSON (`content-type:
application/cloudevents+json`, or no content-type at all, as producers of this daemon's first
contract sent it). Binary mode: the context attributes travel as `ce_*` headers (UTF-8), the
value is `data` and the `content-type` header is its `datacontenttype`; that is the default of
most producers and of the CloudEvents SDKs. Batch mode (`application/cloudevents-batch+json`)
is refused with its own dead-letter reason: one record must stay one event, or one offset
could not say whether "its" event is finished.

Why not the `cloudevents` SDK: its Kafka binding (`cloudevents.kafka`) converts headers to
attributes in the same dozen lines as below, but it raises one generic error for every problem,
while each problem here must become a fixed dead-letter reason with a short detail; it accepts
headers this binding forbids (a value that is not UTF-8) only to fail later; and it would be a
dependency (with its own) for the envelope alone. The validation of the attributes is the
daemon's either way (`daemon/events.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from daemon.errors import InvalidEventError
from daemon.events import Event, RecordRef, parse_cloudevent, parse_record

HEADER_PREFIX = "ce_"
CONTENT_TYPE_HEADER = "content-type"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
# CloudEvents attribute names: lower-case letters and digits, at most 20 characters.
MAX_ATTRIBUTE_NAME_CHARS = 20


def content_mode(record: RecordRef) -> str:
    """ "binary", "structured" or "batch", from the headers (the binding's own rule)."""
    return _mode(_headers(record))


def decode_builtin(record: RecordRef, document: dict[str, Any] | None = None) -> Event:
    """The built-in contract: `type` names kind and action, `subject` the entity, `data` the
    fields. A binary-mode event is read into its structured form first; the event keeps the
    record exactly as it arrived (a dead letter must hold what came, not what we made of it).
    `document`: the value already decoded as `load_json` would (daemon/rereads.py), used where
    the value is the whole event (structured mode)."""
    if record.value is None or not record.headers:
        return parse_record(record, document)
    headers = _headers(record)
    if _mode(headers) == "structured":
        return parse_record(record, document)
    return parse_cloudevent(_read(record, headers), record)


def read_cloudevent(record: RecordRef, document: dict[str, Any] | None = None) -> dict[str, Any]:
    """The event as one JSON object, whatever the content mode; InvalidEventError when the
    record cannot be one (batch mode, bad JSON, bad headers). `document` as for
    `decode_builtin`."""
    return _read(record, _headers(record), document)


def _read(
    record: RecordRef,
    headers: Mapping[str, tuple[str, bytes]],
    document: dict[str, Any] | None = None,
) -> dict[str, Any]:
    mode = _mode(headers)
    if mode == "batch":
        raise InvalidEventError(
            "cloudevents_batch",
            f"{BATCH_CONTENT_TYPE} is not accepted: publish one event per record",
        )
    if mode == "binary":
        return _from_binary(record, headers)
    if document is not None:
        return document
    decoded = load_json(record.value)
    if not isinstance(decoded, dict):
        raise InvalidEventError("not_cloudevent", "expected a JSON object")
    return decoded


def _headers(record: RecordRef) -> dict[str, tuple[str, bytes]]:
    """Headers by lower-cased name (the first of a repeated name wins), with the name as sent."""
    found: dict[str, tuple[str, bytes]] = {}
    for name, raw in record.headers:
        found.setdefault(name.lower(), (name, raw))
    return found


def _mode(headers: Mapping[str, tuple[str, bytes]]) -> str:
    content_type = _text(*headers[CONTENT_TYPE_HEADER]) if CONTENT_TYPE_HEADER in headers else ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type.startswith("application/cloudevents-batch"):
        return "batch"
    if media_type.startswith("application/cloudevents"):
        return "structured"
    if HEADER_PREFIX + "specversion" in headers:
        return "binary"
    return "structured"


def _from_binary(record: RecordRef, headers: Mapping[str, tuple[str, bytes]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for lowered, (name, raw) in headers.items():
        if not lowered.startswith(HEADER_PREFIX):
            continue
        attribute = lowered[len(HEADER_PREFIX) :]
        if not attribute.isalnum() or len(attribute) > MAX_ATTRIBUTE_NAME_CHARS:
            raise InvalidEventError("not_cloudevent", f"header {name[:40]!r} is no attribute")
        document[attribute] = _text(name, raw)
    content_type = None
    if CONTENT_TYPE_HEADER in headers:
        content_type = document["datacontenttype"] = _text(*headers[CONTENT_TYPE_HEADER])
    # An empty value is an event without data (a delete, typically); null is a tombstone.
    if record.value:
        document["data"] = _data(record.value, content_type)
    return document


def _data(value: bytes, content_type: str | None) -> Any:
    media_type = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidEventError(
            "invalid_field", f"data: content type {media_type[:60]!r} is not JSON"
        )
    return load_json(value)


def load_json(value: bytes | None) -> Any:
    try:
        text = (value or b"").decode("utf-8")
        if text.startswith("\ufeff"):
            # json.loads refuses a leading BOM before decoding; _DECODER would not, so the
            # refusal (and its detail) stays what it was.
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise InvalidEventError("invalid_json", "value is not UTF-8") from None
    except (ValueError, RecursionError) as error:
        raise InvalidEventError("invalid_json", str(error)[:60]) from None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and Pivotal would choke on them.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every record, as in daemon/events.py: `json.loads` with an option builds a new
# one per call, which costs more than decoding a small event.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _text(name: str, raw: bytes | None) -> str:
    try:
        return (raw or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEventError("not_cloudevent", f"header {name[:40]!r} is not UTF-8") from None
