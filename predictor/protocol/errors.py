"""The one exception of the wire-format helpers."""

from __future__ import annotations


class MalformedMessage(ValueError):
    """A request or response does not follow its wire format; the message names the field
    (``inputs[0].shape[1]: expected an integer, got a string``).

    The server turns it into ``kserve.errors.InvalidInput`` (HTTP 400, gRPC INVALID_ARGUMENT) where it
    parses a request; the client into a failed request.
    """
