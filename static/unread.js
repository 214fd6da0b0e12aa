/*
 * chatapp browser client: what I have not read. The read marker (PUT .../read, which only
 * moves forward on the server), the "new" divider the page opens at, and the tab title's
 * counts: unread messages and, separately, those mentioning me, counted while the page is
 * hidden, plus those of my other rooms (from the rooms list, rooms.js).
 *
 * The marker moves as I read: to the last line in view, while the page is visible, a
 * moment after scrolling or after new lines arrive (one PUT per MARK_DELAY at most).
 *
 * chatapp.Unread(ctx, view) -> {opened(read), arrived(ev), others(unread, mentions), start}
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var E = chatapp.events;
  var doc = document;

  var MARK_DELAY = 800;            // ms: a burst of scrolling moves the marker once

  chatapp.Unread = function (ctx, view) {
    var baseTitle = doc.title;
    var unread = 0, mentions = 0;          // this room, while hidden
    var otherUnread = 0, otherMentions = 0;
    var marked = "";                       // the furthest id sent to the server
    var markTimer = null;
    var divider = null;

    function hidden() { return doc.hidden === true; }

    function title() {
      var n = unread + otherUnread, m = mentions + otherMentions;
      if (m) {
        doc.title = t("title.mentions", { n: n, m: m, title: baseTitle });
      } else if (n) {
        doc.title = chatapp.tn("title.unread", n, { title: baseTitle });
      } else {
        doc.title = baseTitle;
      }
    }

    // The last line of the log that is (at least partly) in view.
    function lastInView() {
      var scroller = ctx.scroller, limit = scroller.scrollTop + scroller.clientHeight;
      var node = c.lastElement(ctx.log);
      while (node) {
        if (node.getAttribute("data-id") && node.offsetTop < limit) {
          return node.getAttribute("data-id");
        }
        node = c.previousElement(node);
      }
      return "";
    }

    function markSoon() {
      if (markTimer || hidden()) { return; }
      markTimer = setTimeout(function () {
        var id;
        markTimer = null;
        if (hidden()) { return; }
        id = lastInView();
        if (!id || id <= marked) { return; }
        marked = id;
        c.request("PUT", ctx.api + "/read", { id: id }, 10000, function (status) {
          if (status !== 204 && marked === id) { marked = ""; }   // try again next time
        });
      }, MARK_DELAY);
    }

    // The page's first answer from the server: where my marker is. Opens at the first
    // unread line, with a divider above it.
    function opened(read) {
      var node, first = null;
      if (typeof read !== "string") { return; }
      if (read > marked) { marked = read; }
      for (node = c.firstElement(ctx.log); node; node = c.nextElement(node)) {
        if (node.chatappMessage && node.getAttribute("data-id") > read &&
            node.getAttribute("data-nick") !== ctx.me) {
          first = node;
          break;
        }
      }
      if (first && !divider) {
        divider = c.make("li", "new-divider", t("unread.divider"));
        divider.setAttribute("role", "separator");
        ctx.log.insertBefore(divider, first);
        ctx.scroller.scrollTop = Math.max(0, divider.offsetTop - 8);
      }
      markSoon();
    }

    function arrived(ev) {
      if (ev.type !== "message" || ev.nick === ctx.me) { return; }
      if (hidden()) {
        unread++;
        if (E.mentionsMe(ev, ctx.me)) { mentions++; }
        title();
      } else {
        markSoon();
      }
    }

    return {
      start: function () {
        c.on(ctx.scroller, "scroll", markSoon);
        c.on(doc, "visibilitychange", function () {
          if (ctx.live && !hidden()) {
            unread = 0;
            mentions = 0;
            title();
            markSoon();
          }
        });
      },
      opened: opened,
      arrived: arrived,
      others: function (n, m) {
        otherUnread = n;
        otherMentions = m;
        title();
      }
    };
  };
}());
