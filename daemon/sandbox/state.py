"""Everything the sandbox remembers: workspaces, records and the idempotency cache.

Records never leave: a DELETE stamps `deleted_at` (Pivotal soft-deletes) and every read path
filters on it. `created_at` is unique and strictly increasing across the sandbox, so cursor
pagination ("strictly older than") is exact even for records created in the same millisecond.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from daemon.sandbox.config import KeySpec
from daemon.sandbox.errors import ApiError, conflict
from daemon.sandbox.ids import iso_ms, new_cuid

KINDS = ("customer", "contact", "onboarding")


@dataclass(slots=True, kw_only=True)
class Record:
    """One customer, contact or onboarding; `data` is exactly its public JSON object."""

    kind: str
    id: str
    display_id: int
    workspace: str
    created_ms: int  # equals data["created_at"]; unique across the sandbox
    data: dict[str, Any]
    updated_ms: int = 0  # equals data["updated_at"]; strictly increases on every PATCH
    customer_id: str | None = None  # parent customer's cuid for contacts and onboardings
    deleted_at_ms: int | None = None

    @property
    def live(self) -> bool:
        return self.deleted_at_ms is None

    def deleted_body(self) -> dict[str, Any]:
        return {"object": "deleted", "id": self.id, "display_id": self.display_id, "deleted": True}

    def as_admin_json(self) -> dict[str, Any]:
        deleted_at = None if self.deleted_at_ms is None else iso_ms(self.deleted_at_ms)
        return {"workspace": self.workspace, "deleted_at": deleted_at, **self.data}


@dataclass(kw_only=True)
class Workspace:
    """One organization: its records by kind, display ids and live slugs."""

    slug: str
    id: str
    name: str
    records: dict[str, dict[str, Record]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    by_display_id: dict[str, dict[int, Record]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    next_display_id: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 1))
    live_slugs: dict[str, Record] = field(default_factory=dict)

    def newest_first(self, kind: str) -> Iterator[Record]:
        return reversed(self.records[kind].values())


@dataclass(slots=True, kw_only=True)
class IdempotencyEntry:
    """A key's first request: in flight until `status` is set, then replayed byte for byte."""

    fingerprint: bytes
    stored_at: float
    status: int | None = None  # None while the first request is still running
    body: bytes = b""


class Store:
    """The sandbox's whole memory; one instance per app, reset by the admin API."""

    def __init__(self, keys: tuple[KeySpec, ...], clock_ms: int) -> None:
        self.workspaces: dict[str, Workspace] = {}
        self.by_id: dict[str, Record] = {}
        self.idempotency: dict[tuple[str, str, str], IdempotencyEntry] = {}
        self._last_created_ms = 0
        for spec in keys:
            self.ensure_workspace(spec.workspace, clock_ms)

    def ensure_workspace(self, slug: str, now_ms: int) -> Workspace:
        workspace = self.workspaces.get(slug)
        if workspace is None:
            workspace = Workspace(slug=slug, id=new_cuid(now_ms), name=f"{slug} workspace")
            self.workspaces[slug] = workspace
        return workspace

    def next_created_ms(self, now_ms: int) -> int:
        """A creation time never equal to or before the previous one."""
        created = max(now_ms, self._last_created_ms + 1)
        self._last_created_ms = created
        return created

    def add(self, workspace: Workspace, kind: str, now_ms: int, fields: dict[str, Any]) -> Record:
        created_ms = self.next_created_ms(now_ms)
        display_id = workspace.next_display_id[kind]
        workspace.next_display_id[kind] = display_id + 1
        record_id = new_cuid(created_ms)
        stamp = iso_ms(created_ms)
        data = {"object": kind, "id": record_id, "display_id": display_id, **fields}
        data["created_at"] = stamp
        data["updated_at"] = stamp
        record = Record(
            kind=kind,
            id=record_id,
            display_id=display_id,
            workspace=workspace.slug,
            created_ms=created_ms,
            updated_ms=created_ms,
            data=data,
            customer_id=fields.get("customer_id"),
        )
        workspace.records[kind][record_id] = record
        workspace.by_display_id[kind][display_id] = record
        self.by_id[record_id] = record
        if kind == "customer":
            workspace.live_slugs[data["slug"]] = record
        return record

    def find(self, workspace: Workspace, kind: str, ref: str) -> Record | None:
        """A record by display id (all digits) or cuid; slugs never resolve."""
        if ref.isdigit() and ref.isascii():
            return workspace.by_display_id[kind].get(int(ref))
        record = self.by_id.get(ref)
        if record is None or record.kind != kind or record.workspace != workspace.slug:
            return None  # another workspace's record is simply not there
        return record

    def claim_slug(self, workspace: Workspace, slug: str, record: Record | None) -> None:
        owner = workspace.live_slugs.get(slug)
        if owner is not None and owner is not record:
            raise slug_taken(slug)

    def rename_slug(self, workspace: Workspace, record: Record, slug: str) -> None:
        self.claim_slug(workspace, slug, record)
        workspace.live_slugs.pop(record.data["slug"], None)
        workspace.live_slugs[slug] = record

    def soft_delete(self, workspace: Workspace, record: Record, now_ms: int) -> None:
        if record.deleted_at_ms is not None:
            return
        record.deleted_at_ms = now_ms
        if record.kind == "customer" and workspace.live_slugs.get(record.data["slug"]) is record:
            del workspace.live_slugs[record.data["slug"]]

    def touch(self, record: Record, now_ms: int) -> None:
        """Bump `updated_at`, strictly later than before even within one millisecond."""
        record.updated_ms = max(now_ms, record.updated_ms + 1)
        record.data["updated_at"] = iso_ms(record.updated_ms)

    def parent_live(self, record: Record) -> bool:
        if record.customer_id is None:
            return True
        parent = self.by_id.get(record.customer_id)
        return parent is not None and parent.live

    def duplicates(self) -> list[dict[str, Any]]:
        """Live records of one kind and workspace that share `metadata.external_id`."""
        groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
        for workspace in self.workspaces.values():
            for kind, records in workspace.records.items():
                for record in records.values():
                    metadata = record.data.get("metadata")
                    if not record.live or not isinstance(metadata, dict):
                        continue
                    external_id = metadata.get("external_id")
                    if isinstance(external_id, str | int) and not isinstance(external_id, bool):
                        groups[(workspace.slug, kind, str(external_id))].append(record)
        return [
            {
                "workspace": workspace,
                "kind": kind,
                "external_id": external_id,
                "count": len(records),
                "ids": [record.id for record in records],
                "display_ids": [record.display_id for record in records],
            }
            for (workspace, kind, external_id), records in groups.items()
            if len(records) > 1
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        totals = {kind: {"live": 0, "deleted": 0} for kind in KINDS}
        for workspace in self.workspaces.values():
            for kind, records in workspace.records.items():
                for record in records.values():
                    totals[kind]["live" if record.live else "deleted"] += 1
        return totals


def slug_taken(slug: str) -> ApiError:
    return conflict("slug_taken", f"A customer with slug '{slug}' already exists", "slug")
