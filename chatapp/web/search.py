"""``GET /api/rooms/<room>/search?q=&before=&limit=``: find messages of a room.

Thin: the query's rules are ``chatapp.search`` (what matches what), the reading is
``SearchStore.find`` (one index query per page). Each result is the message in its current
state plus ``highlight``: where its text matched, as [start, end) offsets in UTF-16 code units,
so that the page can mark them with text nodes, never with HTML made from the text.
"""

from __future__ import annotations

from chatapp import rules, search
from chatapp.errors import ChatError
from chatapp.web.base import JSONHandler

# The contract: 1-50 results a page, 20 by default (a screenful in the results list).
SEARCH_DEFAULT, SEARCH_MAX = 20, 50


class SearchAPI(JSONHandler):
    async def get(self, room: str) -> None:
        rules.check_room(room)
        # Not stripped: a space after the last word says it is finished (no prefix match).
        q = self.get_query_argument("q", "", strip=False)
        reason = search.bad_query(q)
        if reason is not None:
            raise ChatError("bad_query", reason, 400)
        query = search.parse(q)
        if query.is_empty():
            raise ChatError("bad_query", "The search has no words to look for.", 400)
        before = self.get_query_argument("before", None) or None
        if before is not None:
            rules.check_cursor(before)
        limit = rules.check_limit(
            self.get_query_argument("limit", None), SEARCH_DEFAULT, SEARCH_MAX
        )
        page = await self.chat.store.search.find(
            room, query, rules.parse_id(before) if before else None, limit
        )
        results = [
            dict(event, highlight=search.spans(event.get("text", ""), query))
            for event in page.events
        ]
        self.write_json({
            "results": results,
            "has_more": page.has_more,
            # Where the next page starts (pass it as ``before``): below the last result, or
            # below the last message looked at when a page's scan bound was reached first.
            "next_before": rules.format_id(page.before) if page.before else None,
            # Only when the server's time for one search ran out: more may match.
            **({"partial": True} if page.partial else {}),
        })
