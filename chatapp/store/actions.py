"""Actions on messages (edit, delete, reaction) and replies: decided against their targets'
current state, and the new states written, in ``append``'s transaction (collection
``events``: a message's document holds its current state, see ``kinds``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatapp import kinds, search
from chatapp.errors import ChatError
from chatapp.rules import parse_id
from chatapp.store.client import DESC
from chatapp.store.documents import Appended, to_event


class TargetsMixin:
    """``EventStore``'s part for actions on messages and their targets (``events``)."""

    events: Any

    # -- actions on messages: the target's current state, in the append's transaction --------
    #
    # A message's document holds its current state (``kinds``): every edit, delete and
    # reaction updates it in the transaction that inserts the action, so a page of history is
    # one query. Decisions are made here, on the state this transaction reads: two actions on
    # one message (a delete and an edit from two tabs) cannot both pass on a stale state,
    # since every append of the room also writes its counter, and MongoDB lets only one of two
    # concurrent transactions commit it (the other retries from a fresh read).

    async def _decide_on_targets(
        self, room: str, docs: list[dict[str, Any]], targets: dict[int, dict[str, Any]],
        session: Any,
    ) -> _TargetChanges:
        """Which of ``docs`` (new, in order) are stored, and what they change: replies get
        their preview, actions their verdict (``kinds.decide``), each against the state the
        actions before it in the batch left.

        ``targets``: the stored messages (by seq) that ``docs`` target, read in this
        transaction (``append`` reads them with its client_ids, in one query); updated here
        as the batch's actions change them."""
        changes = _TargetChanges()
        if not any(d.get("target") or d.get("reply_to") for d in docs):
            changes.accepted = docs
            return changes
        first_delete: dict[str, dict[str, Any]] = {}  # target -> this batch's delete of it
        for doc in docs:
            if doc.get("reply_to"):
                target = targets.get(parse_id(doc["reply_to"]))
                if target is None or target.get("type") != "message":
                    changes.answers[id(doc)] = Appended(None, False, refusal=ChatError(
                        "bad_reply", "reply_to must be the id of a message in this room.", 400))
                    continue
                doc["reply_preview"] = kinds.preview_of(target)
            if kinds.targets(doc):
                seq = parse_id(doc["target"])
                verdict = kinds.decide(doc, targets.get(seq))
                if verdict.refusal is not None:
                    changes.answers[id(doc)] = Appended(None, False, refusal=verdict.refusal)
                    continue
                if verdict.noop:
                    current = targets[seq].get("reactions", {})
                    changes.answers[id(doc)] = Appended(None, False, reactions=current)
                    continue
                if verdict.already_deleted:
                    if doc["target"] in first_delete:  # deleted earlier in this batch
                        changes.repeats.append((doc, first_delete[doc["target"]]))
                    else:
                        changes.answers[id(doc)] = await self._delete_event_of(
                            room, doc["target"], session)
                    continue
                assert verdict.state is not None
                targets[seq] = changes.states[seq] = verdict.state
                if doc["type"] == "delete":
                    first_delete[doc["target"]] = doc
                    changes.deleted.append(doc["target"])
                elif doc["type"] == "reaction":
                    changes.reactions[id(doc)] = verdict.state.get("reactions", {})
            changes.accepted.append(doc)
        return changes

    async def _delete_event_of(self, room: str, target: str, session: Any) -> Appended:
        row = await self.events.find_one(
            {"room": room, "type": "delete", "target": target}, session=session
        )
        if row is None:  # a tombstone without its delete event: not made by this code
            return Appended(None, False, refusal=ChatError(
                "deleted", "That message was deleted.", 409))
        return Appended(to_event(row), False)

    async def _save_targets(
        self, room: str, changes: _TargetChanges, results: dict[int, Appended], session: Any
    ) -> None:
        """Write the targets' new states, and take a deleted message's text out of what
        quotes it: its edit events and the previews of replies to it (``kinds.scrub``)."""
        for seq, state in changes.states.items():
            update: dict[str, Any] = {}
            kept = {f: state[f] for f in _STATE_FIELDS if f in state}
            gone = {f: "" for f in _STATE_FIELDS if f not in state}
            # The search index follows the current text in this same transaction: an edited
            # message is found by its new words only, a deleted one by none.
            index = search.index_fields(state)
            kept.update(index)
            gone.update({f: "" for f in search.INDEX_FIELDS if f not in index})
            if kept:
                update["$set"] = kept
            if gone:
                update["$unset"] = gone
            await self.events.update_one({"room": room, "seq": seq}, update, session=session)
        for target in changes.deleted:
            await self.events.update_many(
                {"room": room, "type": "edit", "target": target},
                {"$unset": {"text": "", "mentions": ""}}, session=session,
            )
            await self.events.update_many(
                {"room": room, "reply_to": target, "reply_preview.deleted": {"$ne": True}},
                {"$unset": {"reply_preview.text": ""}, "$set": {"reply_preview.deleted": True}},
                session=session,
            )
        for doc, first in changes.repeats:
            results[id(doc)] = Appended(results[id(first)].event, False)

    async def listed_before(
        self, room: str, seq: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` events just below ``seq`` (or the latest) of the kinds the
        current-state views list (messages, in their current state; joins, leaves), oldest
        first. Actions on messages are left out: their effect is in the messages."""
        query: dict[str, Any] = {"room": room, "type": {"$nin": kinds.UNLISTED}}
        if seq is not None:
            query["seq"] = {"$lt": seq}
        cursor = self.events.find(query).sort("seq", DESC).limit(limit)
        rows = await cursor.to_list(limit)
        return [to_event(r) for r in reversed(rows)]

    async def reactions_of(self, room: str, target: str) -> dict[str, list[str]]:
        """A message's reactions now ({} if none, or no such message)."""
        row = await self.events.find_one(
            {"room": room, "seq": parse_id(target)}, {"reactions": 1}
        )
        return (row or {}).get("reactions", {})


# A message's fields that actions change (``kinds.apply``): written back whole.
_STATE_FIELDS = ("text", "mentions", "reply_to", "reply_preview", "edited", "deleted", "reactions")


@dataclass
class _TargetChanges:
    """What a batch's actions and replies decided (``_decide_on_targets``)."""

    accepted: list[dict[str, Any]] = field(default_factory=list)  # to store, in order
    answers: dict[int, Appended] = field(default_factory=dict)  # id(doc) -> not stored
    states: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> new state
    deleted: list[str] = field(default_factory=list)  # ids of messages deleted now
    reactions: dict[int, dict[str, list[str]]] = field(default_factory=dict)  # id(doc) ->
    repeats: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
