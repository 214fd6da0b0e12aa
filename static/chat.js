/*
 * chatapp browser client: the start of the page, and the wiring between the parts.
 *
 * Loaded last (templates/base.html, templates/room.html). On the join page it remembers
 * the nickname; on the room page it reads the page data (the JSON block #chat-data: the
 * Content-Security-Policy allows no inline script, and a JSON data block is not run), makes
 * the parts and connects them:
 *
 *   transport.js  WebSocket / long-poll  --events-->  logview.js  (draws with events.js;
 *                                                     older.js fetches what came before)
 *   outbox.js     client_id, retries     <--sends---  composer.js, actions.js
 *   people.js     who is here            <--presence- transport.js
 *   typing.js     who is typing          <--typing--- transport.js (frames / long-poll lists)
 *   unread.js     read marker, title     <--arrived-- logview.js;  notify.js: mentions
 *   rooms.js      the rooms sidebar (lives across room switches: switchRoom below)
 *
 * It also owns what belongs to the page as a whole: leaving, the unread count in the title,
 * going to the join page when the session is gone, the live region, and the read-only hook
 * the end-to-end tests use (window.chatapp.transport/state/lastId).
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var doc = document;
  var win = window;

  var NOTICE_MS = 8000;            // how long a notice stays at the top
  var RELOAD_GUARD_MS = 30000;     // at most one reload for a refused cursor in this time

  /* ================================================================== join page */

  function initJoin() {
    var form = c.byId("join-form");
    var nick = c.byId("nick");
    var store = c.getStorage("localStorage");
    var remembered;
    if (!form || !nick) { return; }
    if (store && !nick.value) {
      remembered = store.getItem("chatapp:nick");
      if (remembered) { nick.value = remembered; }
    }
    if (c.byId("join-error")) {
      nick.focus();
      nick.select();
    }
    c.on(form, "submit", function () {
      if (store) {
        try { store.setItem("chatapp:nick", c.trim(nick.value)); } catch (e) { /* full */ }
      }
    });
  }

  /* ================================================================== room page */

  function pageData() {
    var el = c.byId("chat-data");
    try {
      return JSON.parse(el ? el.textContent : "null") || {};
    } catch (e) {
      return {};
    }
  }

  // Listeners on the document or window belong to one room's page: after a switch they
  // must not act for the room that is gone.
  function onLive(ctx, target, type, fn) {
    c.on(target, type, function (e) { if (ctx.live) { fn(e); } });
  }

  function initRoom(main, rooms) {
    var data = pageData();
    var room = data.room || main.getAttribute("data-room") || "lobby";
    var ctx = {
      room: room,
      me: data.nick || main.getAttribute("data-nick") || "",
      api: "/api/rooms/" + encodeURIComponent(room),
      cursor: data.cursor || "",
      hasMore: !!data.has_more,
      limits: data.limits || { max_text: 2000, max_preview: 140, max_emoji: 32 },
      scroller: c.byId("scroller"),
      olderList: c.byId("older"),
      log: c.byId("log"),
      loadOlderBtn: c.byId("load-older"),
      startNote: c.byId("room-start"),
      jumpBtn: c.byId("jump"),
      form: c.byId("composer"),
      input: c.byId("composer-text"),
      sendBtn: c.byId("send"),
      counter: c.byId("composer-count"),
      composerError: c.byId("composer-error"),
      statusText: c.byId("status-text"),
      statusCount: c.byId("status-count"),
      statusEl: c.byId("status"),
      retryBtn: c.byId("retry-now"),
      peopleList: c.byId("people-list"),
      peopleCount: c.byId("people-count"),
      live: true
    };
    var session = c.getStorage("sessionStorage");
    var RELOAD_KEY = "chatapp:bad-cursor-reload";
    var noticeEl = c.byId("notice");
    var announcer = c.byId("announcer");
    var leaveBtn = c.byId("leave");
    var people = c.byId("people");
    var noticeTimer = null;
    var openedMarker = false;
    var leaving = false;     // Leave was clicked: its answer, not a closed socket, says where to go
    var transport, outbox, view, older, composer, actions, presence, typing, unread, notify, moderation;

    function notice(text) {
      if (!noticeEl) { return; }
      c.setText(noticeEl, text);
      c.show(noticeEl, true);
      if (noticeTimer) { clearTimeout(noticeTimer); }
      noticeTimer = setTimeout(function () { c.show(noticeEl, false); }, NOTICE_MS);
    }

    // Said by screen readers (a polite live region): changes the log itself cannot announce.
    function announce(text) {
      if (!announcer) { return; }
      c.setText(announcer, "");
      setTimeout(function () { c.setText(announcer, text); }, 50);
    }

    function goJoin() {
      if (leaving) { return; }
      outbox.save();
      transport.shutdown();
      win.location.href = "/?room=" + encodeURIComponent(room);
    }

    // The server does not know our cursor (e.g. its store was replaced): start afresh.
    // Guarded so that a server that keeps refusing cannot make us reload in a loop.
    function reloadPage() {
      var last = session ? parseFloat(session.getItem(RELOAD_KEY) || "0") : 0;
      if (c.now() - last < RELOAD_GUARD_MS) {
        notice(t("notice.bad.cursor"));
        transport.reconnectLater();
        return;
      }
      if (session) { session.setItem(RELOAD_KEY, String(c.now())); }
      outbox.save();
      transport.shutdown();
      win.location.reload();
    }

    function onFrame(frame) {
      if (frame.type === "ack") {
        outbox.ack(frame.client_id, frame.event);
      } else if (frame.error === "no_session") {
        goJoin();
      } else if (outbox.errorFrame(frame)) {
        return;
      } else if (frame.error === "bad_cursor") {
        reloadPage();
      } else if (moderation && moderation.refused(frame)) {
        return;
      } else {
        notice(frame.message || frame.error || t("notice.server.error"));
      }
    }

    function pageHidden() { return doc.hidden === true; }

    function arrived(ev) {
      unread.arrived(ev);
      typing.seen(ev);
      if (ev.type === "message" && ev.nick !== ctx.me && chatapp.events.mentionsMe(ev, ctx.me)) {
        notify.mention(ev);
      }
      if (ev.type === "join" || ev.type === "leave") { transport.presenceSoon(); }
    }

    // The rooms list came (rooms.js): my marker here, and the counts of my other rooms.
    function mine(list) {
      var i, n = 0, m = 0;
      for (i = 0; i < list.length; i++) {
        if (list[i].room === room) {
          if (!openedMarker) {
            openedMarker = true;
            unread.opened(list[i].read);
          }
        } else {
          n += list[i].unread || 0;
          m += list[i].mentions || 0;
        }
      }
      unread.others(n, m);
    }

    // A notification was clicked: show that message.
    function openMessage(id) {
      var li = view.held(id);
      if (li && li.scrollIntoView) { li.scrollIntoView(); }
    }

    transport = chatapp.Transport(ctx, {
      cursor: function () { return view.lastId(); },
      onEvents: function (events) { view.receive(events); },
      onFrame: onFrame,
      onPresence: function (nicks) { presence.render(nicks); },
      onTyping: function (nicks) { typing.render(nicks); },
      onUp: function () { outbox.flush(); },
      onDown: function () { outbox.requeueInFlight(); },
      sessionGone: goJoin,
      badCursor: reloadPage,
      setStatus: function (state, kind) {
        main.setAttribute("data-transport", kind);
        main.setAttribute("data-state", state);
      }
    });
    outbox = chatapp.Outbox(ctx, transport, {
      label: function (item, text) { view.label(item, text); },
      sent: function (item, ev) { view.sent(item, ev); },
      acted: function (item, ev) { if (ev) { view.stray(ev); } },
      failed: function (item, message) {
        if (item.kind === "send") { view.failed(item, message); } else { actions.failed(item, message); }
        moderation.failed(item.error, message);
      },
      stray: function (ev) { view.stray(ev); },
      sessionGone: goJoin,
      draft: function () { return composer.value(); }
    });
    view = chatapp.LogView(ctx, {
      outbox: function () { return outbox; },
      announce: announce,
      arrived: arrived,
      editFailedSend: function (item) { composer.putBack(item.text); },
      sessionGone: goJoin,
      focusComposer: function () { composer.focus(); }
    });
    older = chatapp.Older(ctx, view, { announce: announce, sessionGone: goJoin });
    composer = chatapp.Composer(ctx, {
      outbox: function () { return outbox; },
      sent: function () { typing.sent(); },
      view: function () { return view; },
      actions: function () { return actions; },
      announce: announce
    });
    actions = chatapp.Actions(ctx, {
      view: function () { return view; },
      older: function () { return older; },
      outbox: function () { return outbox; },
      composer: function () { return composer; },
      announce: announce,
      notice: notice
    });
    presence = chatapp.People(ctx);
    typing = chatapp.Typing(ctx, transport);
    unread = chatapp.Unread(ctx, view);
    notify = chatapp.Notify(ctx, { open: openMessage });
    moderation = chatapp.Moderation(ctx, { notice: notice, stop: function () { transport.shutdown(); } });

    function restoreOutbox() {
      var saved = outbox.restore(), items, i, item;
      if (!saved) { return; }
      composer.setDraft(saved.draft);
      items = saved.items || [];
      for (i = 0; i < items.length; i++) {
        if (!items[i] || typeof items[i].cid !== "string") { continue; }
        item = outbox.add(items[i]);
        if (item.kind === "send") {
          if (typeof item.text === "string") { view.addPending(item); } else { outbox.forget(item); }
        }
      }
    }

    function leave() {
      leaveBtn.disabled = true;
      leaving = true;
      c.request("DELETE", "/api/session", null, 10000, function (status) {
        if (status === 0) {
          leaving = false;
          leaveBtn.disabled = false;
          notice(t("notice.leave.failed"));
          transport.ensureConnected();
          return;
        }
        outbox.clear();
        composer.clear();
        outbox.save();
        transport.shutdown();
        win.location.href = "/";
      });
    }

    function start() {
      view.start(data.events || []);
      older.start();
      if (c.byId("me-nick")) { c.addClass(c.byId("me-nick"), "c" + c.colorIndex(ctx.me)); }
      c.empty(ctx.peopleList);   // the <noscript> list
      presence.render(data.nicks || []);
      composer.start();
      actions.start();
      typing.start();
      unread.start();
      notify.start();

      // On a narrow screen the people list starts folded (it is a <details>).
      if (people && win.matchMedia && win.matchMedia("(max-width: 40em)").matches) {
        people.removeAttribute("open");
      }
      c.on(ctx.jumpBtn, "click", function () {
        view.scrollToBottom();
        composer.focus();
      });
      c.on(ctx.retryBtn, "click", function () {
        transport.resetBackoff(false);
        transport.retryNow();
      });
      c.on(leaveBtn, "click", leave);

      // Keep the newest line in view when the viewport changes (e.g. a phone keyboard).
      (function () {
        var pinned = true;
        c.on(ctx.scroller, "scroll", function () { pinned = view.atBottom(); });
        onLive(ctx, win, "resize", function () { if (pinned) { ctx.scroller.scrollTop = ctx.scroller.scrollHeight; } });
      }());

      onLive(ctx, doc, "visibilitychange", function () {
        if (!pageHidden()) {
          transport.retryNow();   // back from the background: don't sit out a long back-off
          rooms.refresh();
        }
      });
      onLive(ctx, win, "online", function () {
        transport.resetBackoff(true);
        transport.retryNow();
      });
      onLive(ctx, win, "offline", function () { transport.offline(); });
      onLive(ctx, win, "pagehide", function () {
        outbox.save();
        transport.unload();
      });
      onLive(ctx, win, "pageshow", function (e) {
        if (e.persisted) { transport.resume(); }
      });

      // The read-only hook end-to-end tests use (they also watch data-state/data-transport).
      chatapp.transport = function () { return transport.kind(); };
      chatapp.state = function () { return transport.state(); };
      chatapp.lastId = function () { return view.lastId(); };

      restoreOutbox();
      composer.changed();
      view.scrollToBottom();
      if (win.matchMedia && win.matchMedia("(pointer: fine)").matches) { composer.focus(); }
      transport.connect();
      rooms.setCurrent(room);
      rooms.refresh();
    }

    start();
    return {
      room: room,
      mine: mine,
      // Another room is opening in this page: this one stops for good.
      close: function () {
        ctx.live = false;
        outbox.save();
        transport.shutdown();
      }
    };
  }

  /* ================================================================== switching rooms */

  // Open another room without reloading: ask for its latest events (JSON, the newcomer's
  // view), put a fresh copy of this page's chat in place (a clone: no listener of the room
  // that is gone comes along; the rooms sidebar itself moves over), relabel it, and start
  // it. Anything unexpected: a plain navigation.
  function startRooms() {
    var current = null;
    var rooms = chatapp.Rooms({
      go: function (name) { switchRoom(name, true); },
      mine: function (list) { if (current) { current.mine(list); } }
    });

    function relabel(main, name) {
      var sel = function (q) { return main.querySelector(q); };
      var h1 = sel("h1.room-name"), hash, label = sel("label[for=composer-text]");
      var input = sel("#composer-text"), start = sel("#room-start strong"), i;
      var cleared = ["#log", "#older", "#people-list", "#typing"];
      main.setAttribute("data-room", name);
      if (h1) {
        hash = sel("h1.room-name .hash");
        c.empty(h1);
        if (hash) { h1.appendChild(hash); }
        h1.appendChild(doc.createTextNode(name));
      }
      c.setText(sel("#conversation-title"), t("room.messages.in", { room: name }));
      c.setText(label, t("room.message.label", { room: name }));
      if (input) { input.setAttribute("placeholder", t("room.message.label", { room: name })); }
      c.setText(start, "#" + name);
      for (i = 0; i < cleared.length; i++) { c.empty(sel(cleared[i])); }
      c.setText(sel("#people-count"), "0");
      c.show(sel("#notice"), false);
      c.show(sel("#jump"), false);
    }

    function switchRoom(name, push) {
      var url = "/r/" + encodeURIComponent(name);
      if (current && name === current.room) { return; }
      if (!win.history || !win.history.pushState) {
        win.location.href = url;
        return;
      }
      c.request("GET", "/api/rooms/" + encodeURIComponent(name) + "/updates", null, 15000,
        function (status, answer) {
          var oldMain = c.byId("chat"), sidebar = c.byId("rooms"), newMain, slot, data;
          if (status !== 200 || !answer || !oldMain) {
            win.location.href = url;   // the session is gone (the join page), or an error
            return;
          }
          data = pageData();
          data.room = name;
          data.cursor = answer.cursor || "";
          data.events = answer.events || [];
          data.has_more = true;   // unknown here: "Load older" finds out
          data.nicks = [];
          current.close();
          newMain = oldMain.cloneNode(true);
          relabel(newMain, name);
          slot = newMain.querySelector("#rooms");
          if (slot && sidebar) { slot.parentNode.replaceChild(sidebar, slot); }
          oldMain.parentNode.replaceChild(newMain, oldMain);
          c.byId("chat-data").textContent = JSON.stringify(data);
          doc.title = t("room.title", { room: name });
          if (push) { win.history.pushState({ room: name }, "", url); }
          current = initRoom(newMain, rooms);
        });
    }

    c.on(win, "popstate", function () {
      var m = /^\/r\/([^\/?#]+)/.exec(win.location.pathname);
      if (m) { switchRoom(decodeURIComponent(m[1]), false); }
    });
    rooms.start();
    current = initRoom(c.byId("chat"), rooms);
    chatapp.switchRoom = function (name) { switchRoom(name, true); };
  }

  var main = c.byId("chat");
  if (main) { startRooms(); } else { initJoin(); }
}());
