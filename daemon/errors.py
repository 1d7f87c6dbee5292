"""The exception tree of pivotal-sync.

    PivotalSyncError                 base; `retriable` says whether trying again can help
    ├── ConfigError                  a setting is missing or invalid (names the variable)
    ├── MappingFileError             the mapping file is invalid (every problem, with its line)
    ├── InvalidEventError            a Kafka record is not a valid event of the contract
    └── PivotalError                 Pivotal answered something other than success
        ├── TransientError           5xx, 408, timeouts, dropped connections   (retriable)
        │   └── InFlightConflictError  409 idempotency_request_in_progress     (retriable)
        ├── RateLimitedError         429: wait `retry_after` seconds            (retriable)
        ├── AuthError                401/403: the key is missing, bad, revoked  (systemic)
        └── PermanentError           other 4xx: this request can never work     (dead letter)

`ApiResponse.raise_for_status` (pivotal.py) is the one place a status becomes one of these; the
dispatcher decides by class. Anything else raised while handling an event is a bug, never
"the network": the dispatcher dead-letters that event as `internal_error` after bounded
retries (see dispatcher.py).

A subclass' docstring is its default message, so `raise TransientError()` still says something.
"""

from __future__ import annotations


class PivotalSyncError(Exception):
    """pivotal-sync failed."""

    retriable: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(PivotalSyncError):
    """A setting is missing or invalid."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


class MappingFileError(PivotalSyncError):
    """The mapping file is not valid."""

    def __init__(self, problems: list[str]) -> None:
        # Every problem, one a line as "FILE:LINE: where: what", so one run shows them all.
        self.problems = problems
        super().__init__("\n".join(problems))


class InvalidEventError(PivotalSyncError):
    """The record is not a valid event."""

    def __init__(self, reason: str, detail: str) -> None:
        # `reason` is a short snake_case code stored with the dead letter and used as a metric
        # label, so it must come from a small fixed set; `detail` is free text for people.
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class PivotalError(PivotalSyncError):
    """Pivotal answered with an error."""

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int = 0,
        code: str = "",
        body: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.body = body
        super().__init__(message)


class TransientError(PivotalError):
    """Pivotal or the network failed in a way that may pass."""

    retriable = True


class InFlightConflictError(TransientError):
    """Pivotal is still processing a request with the same Idempotency-Key."""


class RateLimitedError(PivotalError):
    """Pivotal's rate limit was hit."""

    retriable = True

    def __init__(
        self, message: str | None = None, *, retry_after: float | None, body: str = ""
    ) -> None:
        # None: the answer had no usable Retry-After; the rate limiter's fallback applies.
        self.retry_after = retry_after
        super().__init__(message, status=429, code="rate_limited", body=body)


class AuthError(PivotalError):
    """Pivotal refused the API key."""


class PermanentError(PivotalError):
    """Pivotal rejected the request; sending it again cannot succeed."""
