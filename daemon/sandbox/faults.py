"""Injected failures: 5xx answers, latency, dropped connections and 429 storms.

Settings arrive as JSON (start-up flags or POST /_sandbox/faults) and are parsed into a frozen
`FaultSettings`; `Faults` holds the current settings plus the counters and the seeded random
generator that decide, request by request, what goes wrong.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from daemon.sandbox.errors import bad_request

Distribution = Literal["uniform", "normal"]


@dataclass(frozen=True, kw_only=True)
class FaultSettings:
    """What to break; every field defaults to "nothing"."""

    error_rate: float = 0.0  # fraction of admitted requests answered `error_status`
    error_status: int = 500  # 500 internal_error or 503 (assumed code service_unavailable)
    fail_next: int = 0  # the next N admitted requests fail, whatever error_rate says
    latency_ms: float = 0.0  # added before an admitted request is handled
    latency_jitter_ms: float = 0.0  # ± uniform range, or the normal standard deviation
    latency_distribution: Distribution = "uniform"
    drop_rate: float = 0.0  # fraction of admitted requests whose connection is aborted
    drop_next: int = 0  # the next N admitted requests are dropped
    drop_after_commit: bool = False  # drop after the change is made (the reply is lost)
    storm_retry_after: int = 0  # while a storm lasts, every request → 429 with this Retry-After
    storm_until: float = 0.0  # Unix time the storm ends
    endpoints: tuple[str, ...] = ()  # only these route templates (e.g. "POST /customers")
    # Injected errors come back as a gateway's HTML page, without JSON and without rate-limit
    # headers (what a load balancer in front of the API answers when the API is down).
    html_errors: bool = False
    # Every error answer quotes the request's Authorization header in its body (gateways and
    # debugging proxies do this): a client must never store or log such a body verbatim.
    echo_authorization: bool = False
    seed: int | None = None  # makes error_rate, drop_rate and jitter reproducible

    @classmethod
    def parse(cls, payload: Mapping[str, Any], now: float) -> FaultSettings:
        """Settings from the admin JSON; `storm` is {retry_after, duration_seconds}."""
        known = {name for name in cls.__dataclass_fields__ if not name.startswith("storm")}
        values: dict[str, Any] = {}
        for name, value in payload.items():
            if name == "storm":
                values.update(_parse_storm(value, now))
            elif name in known:
                values[name] = value
            else:
                raise bad_request("unknown_fault", f"unknown fault setting {name!r}", name)
        if "endpoints" in values:
            values["endpoints"] = tuple(values["endpoints"])
        try:
            settings = cls(**values)
            settings.check()
        except (TypeError, ValueError) as exc:
            raise bad_request("invalid_fault", str(exc)) from exc
        return settings

    def check(self) -> None:
        for name in ("error_rate", "drop_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ValueError(f"{name} is a fraction between 0 and 1")
        if self.error_status not in (500, 503):
            raise ValueError("error_status is 500 or 503")
        if self.latency_distribution not in ("uniform", "normal"):
            raise ValueError("latency_distribution is uniform or normal")
        if not isinstance(self.html_errors, bool) or not isinstance(self.echo_authorization, bool):
            raise ValueError("html_errors and echo_authorization are booleans")
        if min(self.latency_ms, self.latency_jitter_ms, self.fail_next, self.drop_next) < 0:
            raise ValueError("latencies and counts cannot be negative")

    def as_json(self, now: float) -> dict[str, Any]:
        data = asdict(self)
        data["endpoints"] = list(self.endpoints)
        data.pop("storm_retry_after")
        data.pop("storm_until")
        remaining = self.storm_until - now
        data["storm"] = (
            {"retry_after": self.storm_retry_after, "remaining_seconds": round(remaining, 3)}
            if remaining > 0
            else None
        )
        return data

    @property
    def active(self) -> bool:
        return bool(
            self.error_rate
            or self.fail_next
            or self.latency_ms
            or self.latency_jitter_ms
            or self.drop_rate
            or self.drop_next
            or self.storm_until
        )


def _parse_storm(value: object, now: float) -> dict[str, Any]:
    if value is None:
        return {"storm_retry_after": 0, "storm_until": 0.0}
    if not isinstance(value, dict):
        raise bad_request("invalid_fault", "storm is {retry_after, duration_seconds}", "storm")
    retry_after = value.get("retry_after", 1)
    duration = value.get("duration_seconds", 60)
    if not isinstance(retry_after, int) or retry_after < 1:
        raise bad_request("invalid_fault", "storm.retry_after is an integer ≥ 1", "storm")
    if not isinstance(duration, int | float) or duration <= 0:
        raise bad_request("invalid_fault", "storm.duration_seconds is > 0", "storm")
    return {"storm_retry_after": retry_after, "storm_until": now + duration}


class Faults:
    """The current fault settings and the decisions they lead to."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self.random = random.Random(settings.seed)
        self.served = {"errors": 0, "drops": 0, "storm_429": 0}

    def set(self, settings: FaultSettings) -> None:
        self.settings = settings
        self.random = random.Random(settings.seed)

    def applies(self, endpoint: str) -> bool:
        endpoints = self.settings.endpoints
        return not endpoints or endpoint in endpoints

    def storm(self, now: float) -> int | None:
        """Retry-After seconds while a storm lasts, else None."""
        settings = self.settings
        if settings.storm_until > now:
            self.served["storm_429"] += 1
            return settings.storm_retry_after
        return None

    def error_status(self) -> int | None:
        settings = self.settings
        if settings.fail_next > 0:
            self.settings = replace(settings, fail_next=settings.fail_next - 1)
        elif not (settings.error_rate and self.random.random() < settings.error_rate):
            return None
        self.served["errors"] += 1
        return settings.error_status

    def drop(self) -> bool:
        settings = self.settings
        if settings.drop_next > 0:
            self.settings = replace(settings, drop_next=settings.drop_next - 1)
        elif not (settings.drop_rate and self.random.random() < settings.drop_rate):
            return False
        self.served["drops"] += 1
        return True

    def latency_seconds(self) -> float:
        settings = self.settings
        base, jitter = settings.latency_ms, settings.latency_jitter_ms
        if jitter:
            if settings.latency_distribution == "normal":
                base = self.random.gauss(base, jitter)
            else:
                base = self.random.uniform(base - jitter, base + jitter)
        return max(0.0, base) / 1000
