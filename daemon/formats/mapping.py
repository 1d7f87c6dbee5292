"""The mapping file: per topic, which format it carries and how a record becomes Pivotal fields.

    mapping = load_mapping(path)             # MappingFileError naming file, line and field
    mapping.decode(record) -> Event | Skip   # InvalidEventError → dead letter
    MappingFile.builtin()                    # no file: every topic speaks the built-in contract

A topic the file does not name speaks the built-in CloudEvents contract (docs/events.md); so
does a topic declared `format: cloudevents` without a `kind`. Everything else is declarative:

    topics:
      crm.public.accounts:              # the Kafka topic
        format: debezium                # or cloudevents
        kind: customer                  # customer, contact or onboarding
        id: account_id                  # JMESPath: the entity's external (CRM) id
        customer: account_id            # JMESPath: its customer's id (contacts, onboardings)
        sequence: source.lsn            # optional JMESPath; Debezium has a default
        delete_when: "type == 'x.gone'" # cloudevents only: which events delete
        skip_when: ["is_test"]          # records any of these match are skipped (noop)
        fields:                         # Pivotal field: expression, or a rule
          name: company_name
          domain: {from: website, transform: [trim, lowercase]}
          plan: {constant: growth}
          status: {from: stage, default: onboarding}

Expressions are JMESPath (jmespath.org), evaluated over the row for Debezium (the new image, the
old one for a delete; `sequence` over the whole payload) and over the event in structured form
for CloudEvents (`data.company_name`, `subject`, `type`). An expression that yields null leaves
its field out. Unknown Pivotal fields, bad expressions and constants Pivotal would refuse are
errors when the file is loaded, at start-up, not when the first record arrives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser
import jmespath.visitor
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from daemon.errors import ConfigError, InvalidEventError, MappingFileError
from daemon.events import (
    FIELD_RULES,
    MAX_ID_CHARS,
    MAX_SEQUENCE,
    Action,
    EntityKey,
    EntityKind,
    Event,
    RecordRef,
    field_problems,
    validate_fields,
)
from daemon.formats import Decoded, Skip
from daemon.formats.cloudevents import decode_builtin, read_cloudevent
from daemon.formats.debezium import Change, read_change

FORMATS = ("cloudevents", "debezium")
TRANSFORMS: Mapping[str, Callable[[str], str]] = {
    "lowercase": str.lower,
    "uppercase": str.upper,
    "trim": str.strip,
}
TOPIC_KEYS = (
    "format",
    "kind",
    "id",
    "customer",
    "sequence",
    "delete_when",
    "skip_when",
    "fields",
)
FIELD_KEYS = ("from", "constant", "transform", "default")
_MISSING = object()
_INTERPRETER = jmespath.visitor.TreeInterpreter()


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled JMESPath expression that remembers how it was written."""

    text: str
    compiled: jmespath.parser.ParsedResult

    def search(self, document: Any) -> Any:
        # `ParsedResult.search` builds a new interpreter (and its function table) per call,
        # two thirds of a Debezium record's decoding time; the interpreter keeps no state
        # between searches, so one serves every expression.
        return _INTERPRETER.visit(self.compiled.parsed, document)

    def matches(self, document: Any) -> bool:
        # JMESPath truthiness: null, false, "", [] and {} are false; 0 is true (unlike Python).
        value = self.search(document)
        if value is None or value is False:
            return False
        return not (isinstance(value, str | list | dict) and not value)


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldRule:
    """How one Pivotal field is computed."""

    name: str
    expression: Expression | None = None
    constant: Any = None
    transforms: tuple[str, ...] = ()
    default: Any = None

    def value(self, document: Any) -> Any:
        """The field's value, or None to leave it out."""
        if self.expression is None:
            return self.constant
        value = self.expression.search(document)
        if isinstance(value, str):
            for name in self.transforms:
                value = TRANSFORMS[name](value)
        return self.default if value is None else value


@dataclass(frozen=True, kw_only=True, slots=True)
class TopicMapping:
    """One topic's rules; `decode` turns one of its records into an event or a skip."""

    topic: str
    format: str
    kind: EntityKind
    id: Expression
    customer: Expression | None = None
    sequence: Expression | None = None
    delete_when: Expression | None = None
    skip_when: tuple[Expression, ...] = ()
    fields: tuple[FieldRule, ...] = ()

    def decode(self, record: RecordRef, document: dict[str, Any] | None = None) -> Decoded:
        """`document`: the value already decoded, exactly as the stdlib decoder would
        (daemon/rereads.py); reused where the value is a structured CloudEvent."""
        if self.format == "debezium":
            return self._debezium(record, read_change(record))
        if record.value is None:
            return Skip(reason="tombstone", detail="a null value", record=record)
        return self._cloudevent(record, read_cloudevent(record, document))

    def _debezium(self, record: RecordRef, change: Change | None) -> Decoded:
        if change is None:
            return Skip(reason="tombstone", detail="a Debezium tombstone", record=record)
        row = change.row
        skip = self._filtered(row, record)
        if skip is not None:
            return skip
        action = Action.DELETE if change.op == "d" else Action.UPSERT
        fields: dict[str, Any] = {}
        if action is Action.UPSERT:
            fields = self._fields(change.after)
            if change.op == "u" and change.before is not None:
                # Only what changed: an update of unmapped columns must cost no request.
                old = self._fields(change.before)
                fields = {k: v for k, v in fields.items() if old.get(k, _MISSING) != v}
                if not fields:
                    return Skip(reason="unchanged", detail="no mapped field changed", record=record)
        sequence = change.position
        if self.sequence is not None:
            found = self.sequence.search(change.payload)
            sequence = _sequence(found, self.sequence, "not_debezium")
        canonical = json.dumps(change.payload, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"{self.topic}\0{canonical}".encode()).hexdigest()[:32]
        ts_ms = change.source.get("ts_ms")
        return self._event(
            record,
            row,
            event_id=f"debezium:{digest}",
            verb=change.verb,
            action=action,
            fields=fields,
            sequence=sequence,
            source=f"debezium/{self.topic}",
            time=_from_ms(ts_ms),
        )

    def _cloudevent(self, record: RecordRef, document: dict[str, Any]) -> Decoded:
        if document.get("specversion") != "1.0":
            raise InvalidEventError("not_cloudevent", "specversion must be '1.0'")
        event_id, source = document.get("id"), document.get("source")
        if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID_CHARS:
            raise InvalidEventError("not_cloudevent", "`id` is required (a string)")
        if not isinstance(source, str) or not source:
            raise InvalidEventError("not_cloudevent", "`source` is required (a string)")
        skip = self._filtered(document, record)
        if skip is not None:
            return skip
        deleting = self.delete_when is not None and self.delete_when.matches(document)
        action = Action.DELETE if deleting else Action.UPSERT
        fields = self._fields(document) if action is Action.UPSERT else {}
        if self.sequence is not None:
            sequence = _sequence(self.sequence.search(document), self.sequence, "not_cloudevent")
        else:
            sequence = _sequence(document.get("sequence"), None, "not_cloudevent")
        return self._event(
            record,
            document,
            event_id=event_id,
            verb="deleted" if deleting else "updated",
            action=action,
            fields=fields,
            sequence=sequence,
            source=source,
            time=None,
        )

    def _event(
        self,
        record: RecordRef,
        document: Any,
        *,
        event_id: str,
        verb: str,
        action: Action,
        fields: dict[str, Any],
        sequence: int | None,
        source: str,
        time: datetime | None,
    ) -> Event:
        external_id = _identifier(self.id.search(document), "id", self.id)
        customer = external_id
        if self.customer is not None and self.kind is not EntityKind.CUSTOMER:
            customer = _identifier(self.customer.search(document), "customer", self.customer)
        if action is Action.UPSERT:
            validate_fields(self.kind, fields)
        return Event(
            id=event_id,
            type=f"{self.kind}.{verb}",
            source=source,
            entity=EntityKey(kind=self.kind, external_id=external_id),
            action=action,
            customer_external_id=customer,
            fields=fields,
            sequence=sequence,
            time=time,
            record=record,
        )

    def _filtered(self, document: Any, record: RecordRef) -> Skip | None:
        for expression in self.skip_when:
            if expression.matches(document):
                detail = f"skip_when: {expression.text}"
                return Skip(reason="filtered", detail=detail, record=record)
        return None

    def _fields(self, document: Any) -> dict[str, Any]:
        values = {rule.name: rule.value(document) for rule in self.fields}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, kw_only=True, slots=True)
class MappingFile:
    """Every topic's mapping; topics it does not name speak the built-in contract."""

    path: str | None = None
    topics: Mapping[str, TopicMapping] = field(default_factory=dict)
    # Every topic the file names, including those declared with the built-in contract.
    declared: frozenset[str] = frozenset()

    @classmethod
    def builtin(cls) -> MappingFile:
        return cls()

    def decode(self, record: RecordRef, document: dict[str, Any] | None = None) -> Decoded:
        mapping = self.topics.get(record.topic)
        if mapping is None:
            return decode_builtin(record, document)
        return mapping.decode(record, document)


def _identifier(value: Any, name: str, expression: Expression) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    reason = "missing_customer" if name == "customer" else "missing_key"
    if not isinstance(value, str) or not value:
        raise InvalidEventError(reason, f"{name}: {expression.text!r} gave no string or number")
    if len(value) > MAX_ID_CHARS or "\x00" in value:
        raise InvalidEventError(reason, f"{name}: {expression.text!r} gave an unusable id")
    return value


def _sequence(value: Any, expression: Expression | None, reason: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQUENCE:
        return value
    where = f"sequence: {expression.text!r}" if expression else "`sequence`"
    raise InvalidEventError(reason, f"{where} is not an integer from 0 to 2^63-1")


def _from_ms(value: Any) -> datetime | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# Loading: YAML nodes (not plain objects) so that every problem can name its line.


def load_mapping(path: str | Path) -> MappingFile:
    """Read and validate the file; MappingFileError lists every problem found."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MappingFileError([f"{name}: cannot be read ({type(error).__name__})"]) from None
    return parse_mapping(text, name)


def parse_mapping(text: str, name: str) -> MappingFile:
    reader = _Reader(name)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise MappingFileError([f"{name}{line}: {problem}"]) from None
    topics: dict[str, TopicMapping] = {}
    declared: set[str] = set()
    document = reader.mapping(root, "(file)") if root is not None else None
    if document is None:
        reader.problems.append(f"{name}:1: expected a mapping with `topics`")
    else:
        reader.only(document, ("topics",), "(file)")
        nodes = reader.mapping(document.get("topics"), "topics", parent=root) or {}
        for topic, node in nodes.items():
            declared.add(topic)
            mapping = reader.topic(topic, node)
            if mapping is not None:
                topics[topic] = mapping
    if reader.problems:
        raise MappingFileError(reader.problems)
    return MappingFile(path=name, topics=topics, declared=frozenset(declared))


class _Reader:
    """Walks the node tree, collecting problems as "FILE:LINE: where: what"."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self._constructor = yaml.SafeLoader("")

    def fail(self, node: Node, where: str, problem: str) -> None:
        self.problems.append(f"{self.name}:{node.start_mark.line + 1}: {where}: {problem}")

    def mapping(
        self, node: Node | None, where: str, *, parent: Node | None = None
    ) -> dict[str, Node] | None:
        """The keys of a mapping node; a missing one is reported at `parent`'s line."""
        if node is None:
            if parent is not None:
                self.fail(parent, where, "is required")
            return None
        if not isinstance(node, MappingNode):
            self.fail(node, where, "expected a mapping")
            return None
        result: dict[str, Node] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.fail(key, where, "keys must be plain names")
                continue
            if key.value in result:
                self.fail(key, f"{where}.{key.value}", "appears twice")
            result[key.value] = value
        return result

    def only(self, nodes: Mapping[str, Node], allowed: tuple[str, ...], where: str) -> None:
        for key, node in nodes.items():
            if key not in allowed:
                self.fail(node, f"{where}.{key}", f"unknown key (expected {', '.join(allowed)})")

    def plain(self, node: Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def text(self, node: Node, where: str) -> str | None:
        value = self.plain(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str) or not value.strip():
            self.fail(node, where, "expected a non-empty string")
            return None
        return value

    def expression(self, node: Node | None, where: str) -> Expression | None:
        if node is None:
            return None
        text = self.text(node, where)
        if text is None:
            return None
        try:
            return Expression(text, jmespath.compile(text))
        except jmespath.exceptions.JMESPathError as error:
            self.fail(node, where, f"not a JMESPath expression ({str(error).splitlines()[0]})")
            return None

    def topic(self, topic: str, node: Node) -> TopicMapping | None:
        where = f"topics.{topic}"
        nodes = self.mapping(node, where)
        if nodes is None:
            return None
        self.only(nodes, TOPIC_KEYS, where)
        before = len(self.problems)
        fmt = self._format(nodes, node, where)
        if fmt == "cloudevents" and "kind" not in nodes:
            return None  # the built-in contract, declared
        kind = self._kind(nodes, node, where)
        if kind is None:
            return None
        ident = self._required_expression(nodes, node, where, "id")
        customer = self.expression(nodes.get("customer"), f"{where}.customer")
        if kind is not EntityKind.CUSTOMER and "customer" not in nodes:
            self.fail(node, f"{where}.customer", f"is required for a {kind} (its customer's id)")
        if "delete_when" in nodes and fmt != "cloudevents":
            self.fail(nodes["delete_when"], f"{where}.delete_when", "only for cloudevents")
        mapping = TopicMapping(
            topic=topic,
            format=fmt or "cloudevents",
            kind=kind,
            id=ident or Expression("@", jmespath.compile("@")),
            customer=customer,
            sequence=self.expression(nodes.get("sequence"), f"{where}.sequence"),
            delete_when=self.expression(nodes.get("delete_when"), f"{where}.delete_when"),
            skip_when=self._skip_when(nodes.get("skip_when"), f"{where}.skip_when"),
            fields=self._fields(kind, nodes.get("fields"), node, f"{where}.fields"),
        )
        return mapping if len(self.problems) == before else None

    def _format(self, nodes: Mapping[str, Node], node: Node, where: str) -> str | None:
        if "format" not in nodes:
            self.fail(node, f"{where}.format", f"is required ({' or '.join(FORMATS)})")
            return None
        value = self.plain(nodes["format"])
        if value not in FORMATS:
            self.fail(nodes["format"], f"{where}.format", f"expected {' or '.join(FORMATS)}")
            return None
        return str(value)

    def _kind(self, nodes: Mapping[str, Node], node: Node, where: str) -> EntityKind | None:
        if "kind" not in nodes:
            self.fail(node, f"{where}.kind", "is required")
            return None
        value = self.plain(nodes["kind"])
        if value not in {k.value for k in EntityKind}:
            choices = ", ".join(k.value for k in EntityKind)
            self.fail(nodes["kind"], f"{where}.kind", f"expected one of {choices}")
            return None
        return EntityKind(value)

    def _required_expression(
        self, nodes: Mapping[str, Node], node: Node, where: str, key: str
    ) -> Expression | None:
        if key not in nodes:
            self.fail(node, f"{where}.{key}", "is required (a JMESPath expression)")
            return None
        return self.expression(nodes[key], f"{where}.{key}")

    def _skip_when(self, node: Node | None, where: str) -> tuple[Expression, ...]:
        if node is None:
            return ()
        items = node.value if isinstance(node, SequenceNode) else [node]
        found = (self.expression(item, f"{where}[{i}]") for i, item in enumerate(items))
        return tuple(e for e in found if e is not None)

    def _fields(
        self, kind: EntityKind, node: Node | None, topic_node: Node, where: str
    ) -> tuple[FieldRule, ...]:
        nodes = self.mapping(node, where, parent=topic_node)
        rules = []
        for name, value in (nodes or {}).items():
            if name not in FIELD_RULES[kind]:
                known = ", ".join(sorted(FIELD_RULES[kind]))
                self.fail(value, f"{where}.{name}", f"not a {kind} field in Pivotal ({known})")
                continue
            rule = self._field(kind, name, value, f"{where}.{name}")
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def _field(self, kind: EntityKind, name: str, node: Node, where: str) -> FieldRule | None:
        if isinstance(node, ScalarNode):
            expression = self.expression(node, where)
            return FieldRule(name=name, expression=expression) if expression else None
        nodes = self.mapping(node, where)
        if nodes is None:
            return None
        self.only(nodes, FIELD_KEYS, where)
        if ("from" in nodes) == ("constant" in nodes):
            self.fail(node, where, "give exactly one of `from` and `constant`")
            return None
        if "constant" in nodes:
            constant = self.plain(nodes["constant"])
            self._check_value(kind, name, constant, nodes["constant"], f"{where}.constant")
            return FieldRule(name=name, constant=constant)
        default = self.plain(nodes["default"]) if "default" in nodes else None
        if default is not None:
            self._check_value(kind, name, default, nodes["default"], f"{where}.default")
        return FieldRule(
            name=name,
            expression=self.expression(nodes["from"], f"{where}.from"),
            transforms=self._transforms(nodes.get("transform"), f"{where}.transform"),
            default=default,
        )

    def _transforms(self, node: Node | None, where: str) -> tuple[str, ...]:
        if node is None:
            return ()
        items = node.value if isinstance(node, SequenceNode) else [node]
        names = []
        for item in items:
            value = self.plain(item)
            if value not in TRANSFORMS:
                self.fail(item, where, f"{value!r} is not one of {', '.join(TRANSFORMS)}")
            else:
                names.append(str(value))
        return tuple(names)

    def _check_value(self, kind: EntityKind, name: str, value: Any, node: Node, where: str) -> None:
        for problem in field_problems(kind, {name: value}):
            self.fail(node, where, problem.split(": ", 1)[1])


MAPPING_FILE_VARIABLE = "PIVOTAL_SYNC_MAPPING_FILE"


def mapping_for(topics: Sequence[str], path: Path | None) -> MappingFile:
    """The daemon's mapping: the file's, checked against the topics consumed; ConfigError
    (exit 2 at start-up) naming the variable and every problem of the file."""
    if path is None:
        return MappingFile.builtin()
    try:
        mapping = load_mapping(path)
    except MappingFileError as error:
        raise ConfigError(MAPPING_FILE_VARIABLE, "\n" + str(error)) from None
    unread = sorted(mapping.declared - set(topics))
    if unread:
        # Almost always a typo in one of the two places; a silent mapping is worse.
        raise ConfigError(
            MAPPING_FILE_VARIABLE,
            f"maps {', '.join(unread)}, which PIVOTAL_SYNC_KAFKA_TOPICS does not consume",
        )
    return mapping
