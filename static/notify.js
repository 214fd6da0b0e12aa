/*
 * chatapp browser client: browser notifications for mentions. Nothing is asked on page
 * load: the "Notify me" button asks for permission (a person's click, as browsers want),
 * and is hidden once the answer is known or where there are no notifications.
 *
 * A message that mentions me, while the page is hidden or without focus, shows a
 * notification: the title says who and where, the body is the message's text as plain text
 * (the Notification API never parses markup). Clicking it focuses the page and opens the
 * message (hooks.open(id)).
 *
 * chatapp.Notify(ctx, hooks) -> {start, mention(ev)}
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var win = window;
  var doc = document;

  var BODY_CHARS = 200;            // a notification shows a few lines; the rest is in the page

  chatapp.Notify = function (ctx, hooks) {
    var button = c.byId("notify");
    var N = win.Notification;

    function refresh() {
      c.show(button, !!N && N.permission === "default");
    }

    function ask() {
      var answer;
      if (!N) { return; }
      // Old browsers take a callback, new ones return a Promise: handle both.
      answer = N.requestPermission(refresh);
      if (answer && typeof answer.then === "function") { answer.then(refresh, refresh); }
    }

    function away() {
      return doc.hidden === true || (doc.hasFocus && !doc.hasFocus());
    }

    function mention(ev) {
      var note, text;
      if (!N || N.permission !== "granted" || !away()) { return; }
      text = typeof ev.text === "string" ? ev.text : "";
      if (text.length > BODY_CHARS) { text = text.slice(0, BODY_CHARS) + "\u2026"; }
      try {
        note = new N(t("notify.title", { nick: ev.nick, room: ctx.room }), { body: text, tag: ev.id });
      } catch (e) {
        return;   // a browser that allows notifications only from a service worker
      }
      note.onclick = function () {
        try { win.focus(); } catch (e) { /* not allowed */ }
        hooks.open(ev.id);
        note.close();
      };
    }

    return {
      start: function () {
        refresh();
        c.on(button, "click", ask);
      },
      mention: mention
    };
  };
}());
