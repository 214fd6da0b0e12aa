"""The one error type every rule raises; both transports turn it into their own wire format."""

from __future__ import annotations

from typing import Any

from chatapp import metrics


class ChatError(Exception):
    """A refusal a client can act on: a stable machine ``code``, a sentence for people, a status.

    HTTP handlers answer ``{"error": code, "message": message}`` with ``status``; the WebSocket
    handler sends an ``error`` frame with the same code and message.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        # More fields of the answer, beside error and message (``seconds_left`` of a mute).
        self.fields: dict[str, Any] = {}
        metrics.refused(code)


def store_unavailable() -> ChatError:
    return ChatError(
        "store_unavailable",
        "The message store is unavailable; nothing was stored. Retry with the same client_id.",
        503,
    )
