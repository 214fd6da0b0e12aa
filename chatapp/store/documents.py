"""A stored event's public form (``to_event``) and what ``append`` did with one event
(``Appended``): shared by the events, actions and search parts of the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatapp import kinds
from chatapp.errors import ChatError
from chatapp.rules import format_id


def to_event(doc: dict[str, Any]) -> dict[str, Any]:
    """The public form of a stored event (the contract's shape, no internal fields): what
    its kind shows (``kinds.public``)."""
    return kinds.public(dict(doc, id=format_id(doc["seq"])))


@dataclass
class Appended:
    """What ``append`` did with one new event: stored it now, or found it stored before.

    For an action on a message (``kinds``), also: ``refusal``, the error when its target's
    state refused it (nothing stored, ``event`` None); ``reactions``, the target's reactions
    after a reaction (``event`` None when the reaction changed nothing)."""

    event: dict[str, Any] | None
    is_new: bool
    refusal: ChatError | None = None
    reactions: dict[str, list[str]] | None = None
