"""The root of every error Leadback raises on purpose.

Hierarchy (callers catch by what they should *do*, not by which library failed)::

    LeadbackError
    ├── ConfigError                 bad settings: refuse to start
    ├── InvalidInputError           bad request data; carries a stable ``reason`` code
    │   └── AuthError               missing or wrong write key
    ├── RetryableError              try the same thing again later
    │   ├── BrokerUnavailableError  Kafka cannot be reached or timed out
    │   └── StoreUnavailableError   ClickHouse cannot be reached or timed out
    ├── PermanentError              retrying the same thing will fail the same way
    │   ├── StoreRejectedError      ClickHouse refused the data or the statement
    │   └── ContactDecryptError     a contact token does not decrypt with any configured key
    └── BackpressureError           the local buffers are full; ``retry_after`` seconds

Adapters translate third-party errors into these with ``raise ... from exc``, so nothing
above ``leadback.kafka`` or ``leadback.store`` imports aiokafka or clickhouse-connect errors
(nor anything above ``leadback.identity`` cryptography's).
"""

from __future__ import annotations


class LeadbackError(Exception):
    """Base class of every Leadback error."""


class ConfigError(LeadbackError):
    """Settings are invalid or unsafe for the chosen environment."""


class InvalidInputError(LeadbackError):
    """Input that cannot be accepted. ``reason`` is a stable, documented code."""

    def __init__(self, reason: str, detail: str = "", *, field: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.field = field
        super().__init__(f"{reason}: {detail}" if detail else reason)


class AuthError(InvalidInputError):
    """The request does not carry a valid write key for the site."""

    def __init__(self, detail: str = "missing or invalid write key") -> None:
        super().__init__("unauthorized", detail)


class RetryableError(LeadbackError):
    """A transient failure: the same operation may succeed later."""


class BrokerUnavailableError(RetryableError):
    """The Kafka broker did not answer in time or refused the connection."""


class StoreUnavailableError(RetryableError):
    """ClickHouse did not answer in time or refused the connection."""


class PermanentError(LeadbackError):
    """A failure that repeating the same operation will not fix."""


class StoreRejectedError(PermanentError):
    """ClickHouse rejected the statement or the data (parse error, bad SQL, ...)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class ContactDecryptError(PermanentError):
    """An encrypted contact detail is corrupt or was made with a key no longer configured."""


class BackpressureError(LeadbackError):
    """Local buffers (memory queue and disk spool) are full; retry after ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class QueueFullError(LeadbackError):
    """A client-side send queue is full (the broker is slower than the input, or away)."""
