/*
 * chatapp browser client: what this page has asked the server to do and not yet seen done.
 *
 * Every request that changes the room (send, edit, delete, react) is an item with its own
 * client_id, made once: a retry after a timeout, a reconnection or a reload of the tab sends
 * the same client_id, and the server keeps one result (API.md). Over HTTP one request at a
 * time, oldest first, so that the room stores them in the order they were made; over the
 * WebSocket all of them at once, each waiting for its ack.
 *
 * chatapp.Outbox(ctx, transport, hooks) -> {add, flush, ack, errorFrame, retry, forget,
 *   requeueInFlight, matchStream, lastPendingSend, save, restore, items}
 * hooks: label(item, text), sent(item, event) (a send is stored), acted(item, event, reactions)
 *   (an action is stored, event may be null: it changed nothing), failed(item, message),
 *   stray(event) (an ack for an item no longer here), sessionGone(), draft().
 * Items: {cid, kind: "send" | "edit" | "delete" | "react", text, reply_to, reply_preview,
 *   target, emoji, on, status: "queued" | "inflight" | "failed" | "done", tries, ...}.
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;

  var SEND_TIMEOUT = 10000;        // a request not acknowledged by then is sent again
  // Kept with the item across a reload (sessionStorage): enough to send it again.
  var SAVED_FIELDS = ["cid", "kind", "text", "reply_to", "reply_preview", "target", "emoji", "on"];

  chatapp.Outbox = function (ctx, transport, hooks) {
    var api = ctx.api;
    var storage = c.getStorage("sessionStorage");
    var key = "chatapp:outbox:" + ctx.room;
    var items = [];          // oldest first
    var byCid = {};

    function add(fields) {
      var item = { status: "queued", tries: 0, timer: null, req: null }, k;
      for (k in fields) {
        if (fields.hasOwnProperty(k)) { item[k] = fields[k]; }
      }
      item.kind = item.kind || "send";
      item.cid = item.cid || c.newClientId();
      items.push(item);
      byCid[item.cid] = item;
      return item;
    }

    function forget(item) {
      var i;
      if (item.timer) { clearTimeout(item.timer); item.timer = null; }
      if (item.req) { item.req.abort(); item.req = null; }
      for (i = 0; i < items.length; i++) {
        if (items[i] === item) {
          items.splice(i, 1);
          break;
        }
      }
      delete byCid[item.cid];
      item.status = "done";
    }

    // Send whatever is waiting, oldest first. Over HTTP one request at a time, so that
    // the room stores them in the order they were made.
    function flush() {
      var i, item, http = transport.kind() === "longpoll";
      for (i = 0; i < items.length; i++) {
        item = items[i];
        if (item.status === "failed") { continue; }
        if (http && (item.status === "inflight" || item.timer)) { return; }
        if (item.status === "queued" && !item.timer) {
          if (!dispatch(item) || http) { return; }
        }
      }
    }

    function frameOf(item) {
      if (item.kind === "edit") {
        return { type: "edit", target: item.target, text: item.text, client_id: item.cid };
      }
      if (item.kind === "delete") { return { type: "delete", target: item.target, client_id: item.cid }; }
      if (item.kind === "react") {
        return { type: "react", target: item.target, emoji: item.emoji, on: item.on, client_id: item.cid };
      }
      return item.reply_to ? { type: "send", text: item.text, client_id: item.cid, reply_to: item.reply_to }
        : { type: "send", text: item.text, client_id: item.cid };
    }

    // The same request over HTTP: [method, url, body].
    function httpOf(item) {
      var frame = frameOf(item);
      var one = api + "/messages/" + encodeURIComponent(item.target || "");
      if (item.kind === "edit") { return ["PATCH", one, { text: item.text, client_id: item.cid }]; }
      if (item.kind === "delete") { return ["DELETE", one, null]; }
      if (item.kind === "react") {
        return ["POST", one + "/reactions", { emoji: item.emoji, on: item.on, client_id: item.cid }];
      }
      delete frame.type;
      return ["POST", api + "/messages", frame];
    }

    // Send one item now if the transport is up; false if it has to wait.
    function dispatch(item) {
      var how;
      if (!transport.isUp()) {
        hooks.label(item, t("send.waiting"));
        return false;
      }
      item.status = "inflight";
      hooks.label(item, t("send.sending"));
      if (transport.kind() === "websocket") {
        if (!transport.send(frameOf(item))) {
          failedTransiently(item);
          return false;
        }
        item.timer = setTimeout(function () {
          item.timer = null;
          // No ack: the connection is probably dead. Reconnect; the item goes out again
          // with the same client_id, and the server keeps one copy.
          if (item.status === "inflight") { transport.dropSocket(); }
        }, SEND_TIMEOUT);
        return true;
      }
      how = httpOf(item);
      item.req = c.request(how[0], how[1], how[2], SEND_TIMEOUT, function (status, data) {
        var code = data && data.error;
        item.req = null;
        if (item.status !== "inflight") { return; }
        if (status === 200 && data && (data.event || item.kind === "react")) {
          done(item, data.event || null, data.reactions);
        } else if (status === 401 || code === "no_session") {
          hooks.sessionGone();
        } else if (status === 403 && (!code || code === "forbidden") && !item.xsrfRetried) {
          // No XSRF cookie yet: GET /api/session sets one, then try again.
          item.xsrfRetried = true;
          item.status = "queued";
          c.request("GET", "/api/session", null, 10000, function () { flush(); });
        } else if (status === 0 || status >= 500 || code === "store_unavailable") {
          failedTransiently(item);
        } else {
          item.error = code;
          fail(item, (data && data.message) || failureText(status));
        }
      });
      return true;
    }

    function failureText(status) {
      if (status === 413) { return t("send.too.large"); }
      if (status === 429) { return t("send.too.fast"); }
      if (status === 403) { return t("send.refused.403"); }
      return t("send.refused", { status: status });
    }

    // Connection trouble, not a rule: send again later with the same client_id.
    function failedTransiently(item) {
      if (item.timer) { clearTimeout(item.timer); }
      item.status = "queued";
      item.tries++;
      hooks.label(item, t("send.retrying"));
      item.timer = setTimeout(function () {
        item.timer = null;
        flush();
      }, chatapp.backoff(item.tries - 1));
    }

    function fail(item, message) {
      if (item.timer) { clearTimeout(item.timer); item.timer = null; }
      if (item.kind === "send") {
        item.status = "failed";   // stays, with Retry / Edit / Discard
      } else {
        forget(item);
      }
      hooks.failed(item, message);
      flush();
    }

    function done(item, ev, reactions) {
      forget(item);
      if (item.kind === "send") { hooks.sent(item, ev); } else { hooks.acted(item, ev, reactions); }
      flush();
    }

    // An ack frame from the WebSocket.
    function ack(cid, ev) {
      var item = cid ? byCid[cid] : null;
      if (!item) {
        // Already matched through the stream, or sent before a reload.
        if (ev && typeof ev.id === "string") { hooks.stray(ev); }
        return;
      }
      if (item.kind === "send" && (!ev || typeof ev.id !== "string")) { return; }
      done(item, ev || null, null);
    }

    function errorFrame(frame) {
      var item = frame.client_id ? byCid[frame.client_id] : null;
      if (!item) { return false; }
      if (frame.error === "store_unavailable" || frame.error === "internal") {
        failedTransiently(item);
      } else {
        item.error = frame.error;   // the refusal's code (moderation.js tells "muted" apart)
        fail(item, frame.message || frame.error);
      }
      return true;
    }

    // A failed send, tried again by hand.
    function retry(item) {
      item.status = "queued";
      item.tries = 0;
      item.xsrfRetried = false;
      hooks.label(item, t("send.sending"));
      flush();
    }

    // The socket went away: whatever was in flight on it goes out again on the next one.
    function requeueInFlight() {
      var i, item;
      for (i = 0; i < items.length; i++) {
        item = items[i];
        if (item.status === "inflight") {
          if (item.timer) { clearTimeout(item.timer); item.timer = null; }
          if (item.req) { item.req.abort(); item.req = null; }
          item.status = "queued";
          hooks.label(item, t("send.waiting"));
        }
      }
    }

    // Our own message came back through the stream before its ack: the item with its
    // client_id, else the oldest send in flight with the same text (the server stores text
    // trimmed, as we send it).
    function matchStream(ev) {
      var i;
      if (ev.client_id && byCid[ev.client_id]) { return byCid[ev.client_id]; }
      for (i = 0; i < items.length; i++) {
        if (items[i].kind === "send" && items[i].status === "inflight" && items[i].text === ev.text) {
          return items[i];
        }
      }
      return null;
    }

    /* ---- the outbox survives a reload of this tab (same client_ids: no duplicates) */

    function save() {
      var saved = [], i, j, one, draft = hooks.draft();
      if (!storage) { return; }
      for (i = 0; i < items.length; i++) {
        one = {};
        for (j = 0; j < SAVED_FIELDS.length; j++) {
          if (items[i][SAVED_FIELDS[j]] !== undefined) { one[SAVED_FIELDS[j]] = items[i][SAVED_FIELDS[j]]; }
        }
        saved.push(one);
      }
      try {
        if (saved.length || c.trim(draft)) {
          storage.setItem(key, JSON.stringify({ items: saved, draft: draft }));
        } else {
          storage.removeItem(key);
        }
      } catch (e) { /* storage full */ }
    }

    // What was saved: {items: [fields], draft}; the caller re-adds the items it can use.
    function restore() {
      var saved = null;
      if (!storage) { return null; }
      try {
        saved = JSON.parse(storage.getItem(key) || "null");
        storage.removeItem(key);
      } catch (e) {
        saved = null;
      }
      return saved && typeof saved === "object" ? saved : null;
    }

    return {
      add: add,
      flush: flush,
      ack: ack,
      errorFrame: errorFrame,
      retry: retry,
      forget: forget,
      requeueInFlight: requeueInFlight,
      matchStream: matchStream,
      save: save,
      restore: restore,
      clear: function () {
        while (items.length) { forget(items[0]); }
      }
    };
  };
}());
