"""Call outcomes every transport maps to its own wire: gRPC codes, HTTP statuses, WebSocket closes."""

import enum


class Status(enum.Enum):
    """Call outcomes, named as gRPC's status codes; `http` is the status an HTTP API answers with."""
    OK = 200
    CANCELLED = 499
    INVALID_ARGUMENT = 400
    NOT_FOUND = 404
    DEADLINE_EXCEEDED = 408
    OUT_OF_RANGE = 413
    RESOURCE_EXHAUSTED = 429
    UNAUTHENTICATED = 401
    PERMISSION_DENIED = 403
    UNAVAILABLE = 503
    INTERNAL = 500

    @property
    def http(self) -> int:
        return self.value


class ServiceError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
