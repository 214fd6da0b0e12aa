/*
 * chatapp browser client: older history. "Load older messages" (GET .../history?before=,
 * drawn above what the page holds without moving what the reader looks at), and going to
 * the original of a reply, loading older pages until it is there.
 *
 * chatapp.Older(ctx, view, hooks) -> {start, loadOlder, goTo}
 * view: the LogView (held, regroupAll). hooks: announce(text), sessionGone().
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var E = chatapp.events;
  var doc = document;

  var HISTORY_PAGE = 50;           // events per "Load older" request (the server allows 200)
  var FIND_PAGES = 20;             // older pages fetched at most to find a reply's original
  var HIGHLIGHT_MS = 2000;         // how long the original of a reply stays highlighted

  chatapp.Older = function (ctx, view, hooks) {
    var me = ctx.me;
    var scroller = ctx.scroller;
    var olderList = ctx.olderList;
    var log = ctx.log;
    var loadOlderBtn = ctx.loadOlderBtn;
    var hasMore = !!ctx.hasMore;
    var loadingOlder = false;
    var olderWaiters = [];   // callbacks waiting for the "Load older" in flight

    function isEvent(el) { return !!el && el.nodeType === 1 && el.hasAttribute("data-id"); }

    function oldestId() {
      var node = c.firstElement(olderList);
      if (!node) {
        node = c.firstElement(log);
        while (node && !isEvent(node)) { node = c.nextElement(node); }
      }
      return node ? node.getAttribute("data-id") : "";
    }

    function setHasMore(value) {
      hasMore = value;
      c.show(loadOlderBtn, hasMore);
      c.show(ctx.startNote, !hasMore);
    }

    // Fetch the page of events before the oldest shown; then(ok) once it is drawn.
    function loadOlder(then) {
      var before = oldestId();
      if (typeof then === "function") { olderWaiters.push(then); }
      if (loadingOlder) { return; }
      if (!before) {
        setHasMore(false);
        olderDone(false);
        return;
      }
      loadingOlder = true;
      loadOlderBtn.disabled = true;
      c.setText(loadOlderBtn, t("older.loading"));
      c.request("GET", ctx.api + "/history?before=" + encodeURIComponent(before) + "&limit=" + HISTORY_PAGE,
        null, 15000, function (status, data) {
          loadingOlder = false;
          loadOlderBtn.disabled = false;
          c.setText(loadOlderBtn, t("older.load"));
          if (status === 401) {
            hooks.sessionGone();
            return;
          }
          if (status !== 200 || !data) {
            c.setText(loadOlderBtn, t("older.failed"));
            olderDone(false);
            return;
          }
          drawOlder(data, before);
          olderDone(true);
        });
    }

    function olderDone(ok) {
      var waiting = olderWaiters;
      olderWaiters = [];
      for (var i = 0; i < waiting.length; i++) { waiting[i](ok); }
    }

    function drawOlder(data, before) {
      var events = data.events || [], frag = doc.createDocumentFragment(), i, ev, kind;
      var oldHeight, oldTop, hadFocus, anchor, anchorTop;
      for (i = 0; i < events.length; i++) {
        ev = events[i];
        kind = E.kindOf(ev);
        // /history lists messages in their current state; an action here would be a
        // server older than the contract: nothing to draw.
        if (ev && typeof ev.id === "string" && ev.id < before && kind.render) {
          frag.appendChild(kind.render(ev, me));
        }
      }
      // Keep what was at the top where it was: by its own position, since regrouping
      // and the bar above can change heights too.
      anchor = c.firstElement(olderList) || c.firstElement(log);
      anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;
      oldHeight = scroller.scrollHeight;
      oldTop = scroller.scrollTop;
      olderList.insertBefore(frag, olderList.firstChild);
      view.regroupAll();
      hadFocus = doc.activeElement === loadOlderBtn;
      setHasMore(!!data.has_more && events.length > 0);
      if (anchor) {
        scroller.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
      } else {
        scroller.scrollTop = oldTop + (scroller.scrollHeight - oldHeight);
      }
      if (hadFocus && !hasMore) { scroller.focus(); }
    }

    // Show the message with this id (a reply's original), loading older pages if needed.
    function goTo(id, pages) {
      var li = view.held(id);
      pages = pages || 0;
      if (li) {
        if (li.scrollIntoView) { li.scrollIntoView({ block: "center" }); }
        c.addClass(li, "highlight");
        setTimeout(function () { c.removeClass(li, "highlight"); }, HIGHLIGHT_MS);
        li.setAttribute("tabindex", "-1");
        li.focus();
        return;
      }
      if (hasMore && id < oldestId() && pages < FIND_PAGES) {
        loadOlder(function (ok) {
          if (ok) { goTo(id, pages + 1); }
        });
        return;
      }
      hooks.announce(t("announce.original.missing"));
    }

    return {
      start: function () {
        setHasMore(hasMore);
        c.on(loadOlderBtn, "click", function () { loadOlder(); });
      },
      loadOlder: loadOlder,
      goTo: goTo
    };
  };
}());
