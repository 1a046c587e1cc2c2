"""The client's two exceptions: a usage or configuration problem, and one failed request."""

from __future__ import annotations


class ClientError(Exception):
    """A usage or configuration problem (bad flag, unreachable Kubernetes API, isvc not ready): exit 2."""


class RequestError(Exception):
    """One request failed.

    Attributes:
      message: the server's error message (``{"error": ...}`` / gRPC details) or the transport error.
      status: HTTP status, or the gRPC status code name; None for transport errors.
      retryable: worth trying again (server busy, connection refused, timeout).
    """

    def __init__(self, message: str, status: int | str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable

    @property
    def is_client_error(self) -> bool:
        """The server refused the request itself (HTTP 400 / INVALID_ARGUMENT): a bad image, say."""
        return self.status in (400, "INVALID_ARGUMENT")
