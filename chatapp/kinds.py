"""The kinds of events in a room's log: their public fields, who may create each, and how each
changes a message's current state. A new kind is a new entry here.

Every change to a room is an event with the next id (contract, part 2). Two views read the log:

- the **log** itself (``Chat.updates`` with a cursor, the live stream): every event, actions
  included, so a client resuming from any cursor gets every edit, delete and reaction since;
- the **current state** (``/history``, the page, a newcomer's first answer): only ``listed``
  kinds, each message as it is now (``apply``).

A message is stored in its current state: the writer applies each action to its target's
document in the same transaction as it inserts the action (``store.EventStore``), and the
buffer applies it to the target's entry in memory (``buffer.MessageBuffer.publish``), both
through ``apply`` below. So a message event read again from the log (a resume from an older
cursor) is in its current state too, followed by the actions taken on it. That is harmless
because every action is an *absolute* change (this text, deleted, this person's reaction on
or off): applying one again to a state that already has it changes nothing.

The trap: a deleted message's text must be gone from every later answer. ``apply`` turns the
message into a tombstone, and ``scrub`` takes the text out of what quotes it (its edit events,
replies' previews); the store and the buffer both call it on every event that refers to a
deleted message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from chatapp import rules
from chatapp.errors import ChatError

log = logging.getLogger(__name__)

Event = dict[str, Any]

# Fields every event has.
BASE_FIELDS = ("id", "room", "type", "nick", "ts")


class Preview(TypedDict, total=False):
    nick: str
    text: str  # the first rules.MAX_PREVIEW_CHARS characters, when the reply was sent
    deleted: Literal[True]  # instead of text, once the replied-to message is deleted


class MessageEvent(TypedDict, total=False):
    id: str
    room: str
    type: Literal["message"]
    nick: str
    ts: float
    text: str  # its current text (absent once deleted)
    mentions: list[str]  # nicknames written as @nick, each once; absent when none
    reply_to: str
    reply_preview: Preview
    edited: float  # ts of the latest edit
    deleted: Literal[True]  # a tombstone: no text, mentions, preview or reactions
    reactions: dict[str, list[str]]  # emoji -> nicknames, in the order people reacted


class PresenceEvent(TypedDict):
    id: str
    room: str
    type: Literal["join", "leave"]
    nick: str
    ts: float


class EditEvent(TypedDict, total=False):
    id: str
    room: str
    type: Literal["edit"]
    nick: str
    ts: float
    target: str
    text: str  # the new text (absent once the target is deleted: see ``scrub``)
    mentions: list[str]


class DeleteEvent(TypedDict):
    id: str
    room: str
    type: Literal["delete"]
    nick: str
    ts: float
    target: str


class ReactionEvent(TypedDict):
    id: str
    room: str
    type: Literal["reaction"]
    nick: str
    ts: float
    target: str
    emoji: str
    on: bool


class ModerationEvent(TypedDict, total=False):
    id: str
    room: str
    type: Literal["moderation"]
    nick: str  # the moderator
    ts: float
    action: str  # mute, unmute, kick, ban, unban, slow_mode, delete (chatapp.moderation)
    subject: str  # the nickname acted on (mute ... unban)
    until: float  # when a timed mute or ban ends; absent: for good, or not timed
    seconds: int  # the mute's or ban's length, slow mode's interval
    reason: str
    target: str  # the message deleted (delete)


@dataclass(frozen=True)
class Kind:
    name: str
    schema: type  # the TypedDict of its public form
    fields: tuple[str, ...]  # public fields beyond BASE_FIELDS
    listed: bool  # shown in the current-state views (history, page, newcomer's answer)
    targets: bool  # acts on a message of the room (has ``target``)
    created_by: str  # who may create it (for people; the checks are in ``decide``)


KINDS: dict[str, Kind] = {
    k.name: k for k in (
        Kind("message", MessageEvent,
             ("text", "mentions", "reply_to", "reply_preview", "edited", "deleted", "reactions"),
             listed=True, targets=False, created_by="any session, in its own name"),
        Kind("join", PresenceEvent, (), listed=True, targets=False,
             created_by="the server, when a session's first connection opens"),
        Kind("leave", PresenceEvent, (), listed=True, targets=False,
             created_by="the server, after the grace period"),
        Kind("edit", EditEvent, ("target", "text", "mentions"), listed=False, targets=True,
             created_by="the message's sender (its session)"),
        Kind("delete", DeleteEvent, ("target",), listed=False, targets=True,
             created_by="the message's sender; or a moderator (moderation delete)"),
        Kind("reaction", ReactionEvent, ("target", "emoji", "on"), listed=False, targets=True,
             created_by="any session"),
        Kind("moderation", ModerationEvent,
             ("action", "subject", "until", "seconds", "reason", "target"), listed=True,
             targets=False, created_by="the room's owner, a moderator or an admin "
             "(chatapp.moderation)"),
    )
}

# Kinds the current-state views leave out (their effect is in the messages they act on).
UNLISTED = sorted(k.name for k in KINDS.values() if not k.listed)
# Kinds that change who is present.
PRESENCE_KINDS = frozenset({"join", "leave"})

# What a tombstone keeps: nothing of what was said.
_TOMBSTONE_FIELDS = ("text", "mentions", "reply_to", "reply_preview", "edited", "reactions")


def kind_of(event: Event) -> Kind | None:
    """The event's kind; None for one this version does not know (stored by a newer one)."""
    return KINDS.get(event.get("type", ""))


def public(doc: Event) -> Event:
    """The public form of a stored event: the base fields and its kind's fields, nothing
    internal. An unknown kind shows its base fields only."""
    event = {f: doc[f] for f in BASE_FIELDS if f in doc}
    kind = kind_of(doc)
    if kind is None:
        return event
    if doc.get("deleted"):
        event["deleted"] = True
        return event
    for f in kind.fields:
        if f in doc and doc[f] not in (None, [], {}):
            event[f] = doc[f]
    return event


def is_listed(event: Event) -> bool:
    """Shown in the current-state views? An unknown kind is: a newer version's kinds that
    act on messages are not shown as lines, but neither would they be silently hidden."""
    kind = kind_of(event)
    return kind is None or kind.listed


def targets(event: Event) -> bool:
    kind = kind_of(event)
    return kind is not None and kind.targets


# -- who may: the checks an action passes against its target's current state ---------------


@dataclass
class Verdict:
    """What an action does to its target: ``state`` (the target's new state) when it is
    stored; else a ``refusal``, or ``noop`` (a reaction that changes nothing), or
    ``already_deleted`` (a delete of a deleted message: answered with its delete event)."""

    state: Event | None = None
    refusal: ChatError | None = None
    noop: bool = False
    already_deleted: bool = False


def no_such_message() -> ChatError:
    return ChatError("no_such_message", "There is no such message in this room.", 404)


def may_delete(action: Event, target: Event) -> bool:
    """Who may delete a message: its sender; and a moderator of the room (or its owner, or an
    admin): ``chatapp.moderation`` checked the role and marked the action ``moderator``."""
    return target.get("sid") == action["sid"] or action.get("moderator") is True


def decide(action: Event, target: Event | None) -> Verdict:
    """May ``action`` (a stored-to-be doc, with its ``sid``) act on ``target`` (the message's
    stored doc in its current state, or None), and what does it change?"""
    if target is None or target.get("type") != "message":
        return Verdict(refusal=no_such_message())
    kind = action["type"]
    if kind == "edit":
        if target.get("sid") != action["sid"]:
            return Verdict(refusal=ChatError(
                "not_yours", "Only the sender of a message may edit it.", 403))
        if target.get("deleted"):
            return Verdict(refusal=_deleted())
    elif kind == "delete":
        if target.get("deleted"):
            return Verdict(already_deleted=True)
        if not may_delete(action, target):
            return Verdict(refusal=ChatError(
                "not_yours", "Only the sender of a message may delete it.", 403))
    elif kind == "reaction":
        if target.get("deleted"):
            return Verdict(refusal=_deleted())
        reactions = target.get("reactions", {})
        if (action["nick"] in reactions.get(action["emoji"], [])) == action["on"]:
            return Verdict(noop=True)
        if action["on"]:
            refusal = _too_many(reactions, action["nick"])
            if refusal is not None:
                return Verdict(refusal=refusal)
    else:
        log.warning("no rule for acting with a %r event", kind)
        return Verdict(refusal=no_such_message())
    return Verdict(state=apply(target, action))


def _too_many(reactions: dict[str, list[str]], nick: str) -> ChatError | None:
    if sum(len(n) for n in reactions.values()) >= rules.MAX_REACTIONS_PER_MESSAGE:
        return ChatError("too_many_reactions", "This message has all the reactions it "
                         f"can take ({rules.MAX_REACTIONS_PER_MESSAGE}).", 409)
    if sum(nick in n for n in reactions.values()) >= rules.MAX_REACTIONS_PER_PERSON:
        return ChatError("too_many_reactions", "You have reacted to this message "
                         f"{rules.MAX_REACTIONS_PER_PERSON} times already.", 409)
    return None


def _deleted() -> ChatError:
    return ChatError("deleted", "That message was deleted.", 409)


# -- how each kind changes a message's current state ------------------------------------------


def apply(message: Event, action: Event) -> Event:
    """The message's state after ``action`` (a new dict; fields it does not know, such as the
    store's internal ones, are kept). Absolute changes: applying one twice is applying it once."""
    state = dict(message)
    kind = action.get("type")
    if state.get("deleted"):
        return state  # a tombstone stays one
    if kind == "edit":
        if "text" in action:  # an edit event scrubbed of its text changes nothing
            text_changed(state, action["text"])
            state["edited"] = action["ts"]
    elif kind == "delete":
        text_changed(state, None)
        for f in _TOMBSTONE_FIELDS:
            state.pop(f, None)
        state["deleted"] = True
    elif kind == "reaction":
        reactions = {e: list(n) for e, n in state.get("reactions", {}).items()}
        nicks = reactions.setdefault(action["emoji"], [])
        if action["on"] and action["nick"] not in nicks:
            nicks.append(action["nick"])
        elif not action["on"] and action["nick"] in nicks:
            nicks.remove(action["nick"])
        state["reactions"] = {e: n for e, n in reactions.items() if n}
        if not state["reactions"]:
            del state["reactions"]
    else:
        log.warning("no rule for applying a %r event to a message", kind)
    return state


def text_changed(state: Event, text: str | None) -> None:
    """The one place a message's current text changes (an edit; None: deleted), and with it
    what is derived from the text (mentions). The search index follows in the store
    (``EventStore._save_targets``, in the transaction of the edit or delete)."""
    if text is None:
        state.pop("text", None)
        state.pop("mentions", None)
        return
    state["text"] = text
    mentions = rules.find_mentions(text)
    if mentions:
        state["mentions"] = mentions
    else:
        state.pop("mentions", None)


def scrub(event: Event, deleted_id: str) -> Event:
    """``event`` with the text of deleted message ``deleted_id`` taken out (an edit of it, a
    reply quoting it); the event itself when it does not quote it."""
    kind = event.get("type")
    if kind == "edit" and event.get("target") == deleted_id and "text" in event:
        return {k: v for k, v in event.items() if k not in ("text", "mentions")}
    if kind == "message" and event.get("reply_to") == deleted_id and "reply_preview" in event:
        preview = event["reply_preview"]
        if not preview.get("deleted"):
            return dict(event, reply_preview={"nick": preview.get("nick"), "deleted": True})
    return event


def preview_of(target: Event) -> Preview:
    """A reply's preview of ``target`` (its current state), taken when the reply is sent."""
    if target.get("deleted"):
        return {"nick": target["nick"], "deleted": True}
    return {"nick": target["nick"], "text": target.get("text", "")[:rules.MAX_PREVIEW_CHARS]}
