/*
 * chatapp browser client.
 *
 * Plain ES5 on purpose: old browsers are users too. No build step, no framework, no
 * let/const, arrow functions, template strings, classes, Promise or fetch. The test suite
 * (tests/test_es5.py) fails on anything newer than ES5 here; keep it that way.
 *
 * Everything the server or another person supplied reaches the page through textContent
 * or createTextNode, never innerHTML.
 *
 * The HTTP and WebSocket contract this speaks is API.md (pages, JSON API, WebSocket).
 * The page hands over its data in data- attributes of <main id="chat">, because the
 * Content-Security-Policy allows no inline script.
 */
(function () {
  "use strict";

  var doc = document;
  var win = window;

  /* ------------------------------------------------------------------ tunables */

  var BACKOFF_MIN = 1000;          // first reconnect delay (ms), doubled on every failure...
  var BACKOFF_MAX = 30000;         // ...up to this, plus up to 30% random jitter
  var SEND_TIMEOUT = 10000;        // a message not acknowledged by then is sent again
  var POLL_TIMEOUT = 70000;        // the server answers a long-poll within poll_timeout (25 s)
  var WS_MIN_LIFETIME = 5000;      // a WebSocket that dies sooner than this "did not work"
  var WS_MAX_FAILURES = 2;         // that many in a row (server reachable): use long-polling
  var WS_RETRY_INTERVAL = 60000;   // while on long-polling after a fallback, try WebSocket again
  var WS_PROBE_TIMEOUT = 15000;
  var WS_OPEN_TIMEOUT = 10000;     // a handshake unanswered by then (a proxy that swallows it) failed
  var PRESENCE_INTERVAL = 30000;   // long-polling only; WebSocket pushes presence frames
  var HISTORY_PAGE = 50;
  var MAX_TEXT = 2000;             // characters, as the server counts them (code points)
  var COUNTER_FROM = 1800;         // show the character counter from this length on
  var GROUP_GAP = 300;             // s: consecutive messages of one person are grouped

  /* ------------------------------------------------------------------ helpers */

  function byId(id) { return doc.getElementById(id); }

  function now() { return new Date().getTime(); }

  function on(target, type, fn) {
    if (target && target.addEventListener) { target.addEventListener(type, fn, false); }
  }

  function hasClass(el, name) {
    return (" " + el.className + " ").indexOf(" " + name + " ") >= 0;
  }

  function addClass(el, name) {
    if (!hasClass(el, name)) { el.className = el.className ? el.className + " " + name : name; }
  }

  function removeClass(el, name) {
    el.className = trim((" " + el.className + " ").replace(" " + name + " ", " "));
  }

  function toggleClass(el, name, yes) {
    if (yes) { addClass(el, name); } else { removeClass(el, name); }
  }

  // The hidden attribute (styled [hidden] {display: none} for browsers that predate it).
  function show(el, yes) {
    if (!el) { return; }
    if (yes) { el.removeAttribute("hidden"); } else { el.setAttribute("hidden", ""); }
  }

  function isShown(el) { return !!el && !el.hasAttribute("hidden"); }

  function make(tag, cls, text) {
    var el = doc.createElement(tag);
    if (cls) { el.className = cls; }
    if (text !== undefined && text !== null) { el.appendChild(doc.createTextNode(String(text))); }
    return el;
  }

  function setText(el, text) {
    if (el) { el.textContent = text; }
  }

  function trim(s) { return String(s).replace(/^\s+|\s+$/g, ""); }

  // Length in code points, like the server (Python's len), not UTF-16 units.
  function countChars(s) { return s.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, "_").length; }

  function pad2(n) { return n < 10 ? "0" + n : String(n); }

  function nextElement(node) {
    node = node.nextSibling;
    while (node && node.nodeType !== 1) { node = node.nextSibling; }
    return node;
  }

  function previousElement(node) {
    node = node.previousSibling;
    while (node && node.nodeType !== 1) { node = node.previousSibling; }
    return node;
  }

  function firstElement(parent) {
    var node = parent.firstChild;
    while (node && node.nodeType !== 1) { node = node.nextSibling; }
    return node;
  }

  function lastElement(parent) {
    var node = parent.lastChild;
    while (node && node.nodeType !== 1) { node = node.previousSibling; }
    return node;
  }

  function getStorage(kind) {
    try {
      var s = win[kind];
      s.setItem("chatapp:probe", "1");
      s.removeItem("chatapp:probe");
      return s;
    } catch (e) {
      return null;
    }
  }

  function cookie(name) {
    var parts = doc.cookie ? doc.cookie.split(";") : [];
    var i, part, eq, value;
    for (i = 0; i < parts.length; i++) {
      part = parts[i];
      eq = part.indexOf("=");
      if (eq > 0 && trim(part.slice(0, eq)) === name) {
        value = trim(part.slice(eq + 1));
        if (value.charAt(0) === "\"" && value.charAt(value.length - 1) === "\"") {
          value = value.slice(1, -1);
        }
        return value;
      }
    }
    return "";
  }

  // Tornado's XSRF token: the _xsrf cookie, or the hidden field the page carries.
  function xsrfToken() {
    var token = cookie("_xsrf");
    var field;
    if (!token) {
      field = doc.querySelector ? doc.querySelector("input[name=\"_xsrf\"]") : null;
      if (field) { token = field.value; }
    }
    return token;
  }

  /*
   * One XMLHttpRequest. done(status, data) is called exactly once, later, unless the
   * request is aborted through the returned handle; status is 0 for a network error or a
   * timeout (then data is {error: "timeout"} or null). data is the parsed JSON body or null.
   */
  function request(method, url, body, timeout, done) {
    var xhr = new XMLHttpRequest();
    var finished = false;
    var aborted = false;
    var timer = null;
    var token;

    function finish(status, data) {
      if (finished) { return; }
      finished = true;
      if (timer) { clearTimeout(timer); }
      setTimeout(function () {
        if (!aborted) { done(status, data); }
      }, 0);
    }

    xhr.open(method, url, true);
    xhr.setRequestHeader("Accept", "application/json");
    if (method === "GET") {
      xhr.setRequestHeader("Cache-Control", "no-cache");
    }
    // On every request, GETs included: a long-poll counts as presence only with the token
    // (so that another site's GET, which cannot carry it, makes nobody join a room).
    token = xsrfToken();
    if (token) { xhr.setRequestHeader("X-XSRFToken", token); }
    if (body !== null && body !== undefined) {
      xhr.setRequestHeader("Content-Type", "application/json; charset=utf-8");
    }
    xhr.onreadystatechange = function () {
      var status, data = null;
      if (xhr.readyState !== 4 || finished) { return; }
      status = xhr.status === 1223 ? 204 : xhr.status;   // old IE reports 204 as 1223
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch (e) {
        data = null;
      }
      finish(status, data);
    };
    if (timeout) {
      timer = setTimeout(function () {
        finish(0, { error: "timeout" });
        try { xhr.abort(); } catch (e) { /* nothing to do */ }
      }, timeout);
    }
    try {
      xhr.send(body === null || body === undefined ? null : JSON.stringify(body));
    } catch (e) {
      finish(0, null);
    }
    return {
      abort: function () {
        finished = true;
        aborted = true;
        if (timer) { clearTimeout(timer); }
        try { xhr.abort(); } catch (e) { /* nothing to do */ }
      }
    };
  }

  /* ------------------------------------------------------------------ time */

  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun",
                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function toDate(ts) {
    var d = new Date(parseFloat(ts) * 1000);
    return isFinite(d.getTime()) ? d : new Date();
  }

  // Local HH:MM:SS; events of another day get the date in front ("20 Nov 14:03:22").
  function formatTime(d) {
    var today = new Date();
    var text = pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
    if (d.getFullYear() !== today.getFullYear()) {
      return d.getDate() + " " + MONTHS[d.getMonth()] + " " + d.getFullYear() + " " + text;
    }
    if (d.getMonth() !== today.getMonth() || d.getDate() !== today.getDate()) {
      return d.getDate() + " " + MONTHS[d.getMonth()] + " " + text;
    }
    return text;
  }

  function fillTime(timeEl, ts) {
    var d = toDate(ts);
    timeEl.setAttribute("datetime", d.toISOString());
    timeEl.setAttribute("title", d.toLocaleString());
    setText(timeEl, formatTime(d));
  }

  /* ------------------------------------------------------------------ nick colours */

  // Must match nick_color in templates/room.html: a polynomial hash over code points,
  // modulo a prime (2^31 - 1) so short names spread over the 8 colours; every step stays
  // below 2^53, so it is exact in JavaScript numbers.
  function colorIndex(nick) {
    var h = 7, i, c, d;
    for (i = 0; i < nick.length; i++) {
      c = nick.charCodeAt(i);
      if (c >= 0xD800 && c <= 0xDBFF && i + 1 < nick.length) {
        d = nick.charCodeAt(i + 1);
        if (d >= 0xDC00 && d <= 0xDFFF) {
          c = (c - 0xD800) * 0x400 + (d - 0xDC00) + 0x10000;
          i++;
        }
      }
      h = (h * 1000003 + c) % 2147483647;
    }
    return h % 8;
  }

  function nickElement(nick) {
    var el = make("span", "nick c" + colorIndex(nick), nick);
    el.setAttribute("dir", "auto");
    return el;
  }

  /* ================================================================== join page */

  function initJoin() {
    var form = byId("join-form");
    var nick = byId("nick");
    var store = getStorage("localStorage");
    var remembered;
    if (!form || !nick) { return; }
    if (store && !nick.value) {
      remembered = store.getItem("chatapp:nick");
      if (remembered) { nick.value = remembered; }
    }
    if (byId("join-error")) {
      nick.focus();
      nick.select();
    }
    on(form, "submit", function () {
      if (store) {
        try { store.setItem("chatapp:nick", trim(nick.value)); } catch (e) { /* full */ }
      }
    });
  }

  /* ================================================================== room page */

  function initRoom(main) {
    var ROOM = main.getAttribute("data-room") || "lobby";
    var ME = main.getAttribute("data-nick") || "";
    var API = "/api/rooms/" + encodeURIComponent(ROOM);

    var scroller = byId("scroller");
    var olderList = byId("older");
    var log = byId("log");
    var loadOlderBtn = byId("load-older");
    var startNote = byId("room-start");
    var jumpBtn = byId("jump");
    var form = byId("composer");
    var input = byId("composer-text");
    var counter = byId("composer-count");
    var composerError = byId("composer-error");
    var statusText = byId("status-text");
    var statusCount = byId("status-count");
    var statusEl = byId("status");
    var retryBtn = byId("retry-now");
    var noticeEl = byId("notice");
    var leaveBtn = byId("leave");
    var people = byId("people");
    var peopleList = byId("people-list");
    var peopleCount = byId("people-count");

    var session = getStorage("sessionStorage");
    var OUTBOX_KEY = "chatapp:outbox:" + ROOM;
    var RELOAD_KEY = "chatapp:bad-cursor-reload";

    /* ---- what is on screen */

    var lastId = main.getAttribute("data-cursor") || "";   // cursor: last event from the stream
    var hasMore = main.getAttribute("data-has-more") === "true";
    var shown = {};          // id -> true: placed by its ack before the stream reached it
    var unread = 0;
    var baseTitle = doc.title;

    /* ---- connection */

    var transport = win.WebSocket ? "websocket" : "longpoll";
    var state = "";
    var ws = null;           // the receiving WebSocket (open or opening)
    var wsOpen = false;
    var wsStableTimer = null;
    var wsFailures = 0;      // consecutive WebSockets that failed while HTTP worked
    var fellBack = false;    // on long-polling because WebSocket did not work
    var probe = null;        // a WebSocket being tried while on long-polling
    var probeTimer = null;
    var polling = false;
    var pollToken = null;
    var pollReq = null;
    var presenceTimer = null;
    var presenceSoonTimer = null;
    var attempt = 0;         // consecutive failed (re)connections, for the back-off
    var retryTimer = null;
    var retryAt = 0;
    var countdownTimer = null;
    var unloading = false;
    var leaving = false;     // Leave was clicked: its answer, not a closed socket, says where to go

    /* ---- sending */

    var outbox = [];         // items, oldest first: {cid, text, li, status, tries, timer, ...}
    var byCid = {};          // client_id -> item
    var loadingOlder = false;
    var noticeTimer = null;

    /* ================================================================ status */

    function setStatus(newState, newTransport) {
      if (newTransport) { transport = newTransport; }
      if (newState === state && main.getAttribute("data-transport") === transport) { return; }
      state = newState;
      main.setAttribute("data-transport", transport);
      main.setAttribute("data-state", state);
      renderStatus();
    }

    function renderStatus() {
      var how = transport === "websocket" ? "WebSocket" : "Long-polling";
      var what = {
        connecting: "connecting\u2026",
        connected: "connected",
        reconnecting: "reconnecting",
        offline: "offline"
      }[state] || state;
      if (fellBack && transport === "longpoll") { how = "Long-polling (WebSocket unavailable)"; }
      setText(statusText, how + " \u00b7 " + what);
      if (statusEl) { statusEl.className = "status is-" + state; }
      show(retryBtn, !!retryTimer);
      renderCountdown();
    }

    function renderCountdown() {
      var left;
      if (retryTimer && retryAt) {
        left = Math.max(1, Math.ceil((retryAt - now()) / 1000));
        setText(statusCount, (state === "offline" ? " \u2014 retrying in " : " in ") + left + " s");
      } else {
        setText(statusCount, "");
      }
    }

    function notice(text) {
      if (!noticeEl) { return; }
      setText(noticeEl, text);
      show(noticeEl, true);
      if (noticeTimer) { clearTimeout(noticeTimer); }
      noticeTimer = setTimeout(function () { show(noticeEl, false); }, 8000);
    }

    /* ================================================================ reconnecting */

    function clearRetry() {
      if (retryTimer) { clearTimeout(retryTimer); }
      if (countdownTimer) { clearInterval(countdownTimer); }
      retryTimer = null;
      countdownTimer = null;
      retryAt = 0;
    }

    // Exponential back-off with jitter; then connect() again with the current transport.
    function scheduleReconnect() {
      var base, delay;
      if (unloading) { return; }
      clearRetry();
      base = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, attempt));
      delay = Math.round(base * (1 + 0.3 * Math.random()));
      attempt++;
      retryAt = now() + delay;
      retryTimer = setTimeout(function () {
        clearRetry();
        connect();
      }, delay);
      countdownTimer = setInterval(renderCountdown, 1000);
      setStatus(win.navigator.onLine === false ? "offline" : "reconnecting");
      renderStatus();
    }

    function retryNow() {
      if (retryTimer) {
        clearRetry();
        connect();
      }
    }

    function connect() {
      if (unloading) { return; }
      clearRetry();
      if (transport === "websocket") { openSocket(); } else { startPolling(); }
    }

    function shutdown() {
      unloading = true;
      clearRetry();
      stopPolling();
      closeProbe();
      if (ws) {
        var sock = ws;
        ws = null;
        wsOpen = false;
        try { sock.close(); } catch (e) { /* gone already */ }
      }
    }

    function goJoin() {
      if (leaving) { return; }
      saveOutbox();
      shutdown();
      win.location.href = "/?room=" + encodeURIComponent(ROOM);
    }

    // The server does not know our cursor (e.g. its store was replaced): start afresh.
    // Guarded so that a server that keeps refusing cannot make us reload in a loop.
    function reloadPage() {
      var last = session ? parseFloat(session.getItem(RELOAD_KEY) || "0") : 0;
      if (now() - last < 30000) {
        notice("The server refused our position in the conversation; retrying.");
        stopPolling();
        scheduleReconnect();
        return;
      }
      if (session) { session.setItem(RELOAD_KEY, String(now())); }
      saveOutbox();
      shutdown();
      win.location.reload();
    }

    // After a WebSocket failed: is the server there, and is our session alive?
    function checkSession(cb) {
      request("GET", "/api/session", null, 10000, function (status, data) {
        if (status === 200 && data) {
          cb(data.nick ? "ok" : "gone");
        } else if (status === 401) {
          cb("gone");
        } else {
          cb("unknown");
        }
      });
    }

    /* ================================================================ WebSocket */

    function socketUrl() {
      return (win.location.protocol === "https:" ? "wss:" : "ws:") + "//" + win.location.host +
        API + "/ws?cursor=" + encodeURIComponent(lastId);
    }

    function openSocket() {
      var sock;
      setStatus("connecting", "websocket");
      try {
        sock = new win.WebSocket(socketUrl());
      } catch (e) {
        socketFailed();
        return;
      }
      adoptSocket(sock, false);
    }

    // Make sock the receiving connection. alreadyOpen: a probe that has just opened.
    function adoptSocket(sock, alreadyOpen) {
      var openedAt = 0;
      var openTimer = null;

      function opened() {
        if (openTimer) { clearTimeout(openTimer); openTimer = null; }
        if (ws !== sock) { return; }
        openedAt = now();
        wsOpen = true;
        setStatus("connected", "websocket");
        if (wsStableTimer) { clearTimeout(wsStableTimer); }
        wsStableTimer = setTimeout(function () {
          if (ws === sock && wsOpen) {
            wsFailures = 0;
            attempt = 0;
          }
        }, WS_MIN_LIFETIME);
        flushOutbox();
      }

      ws = sock;
      wsOpen = false;
      sock.onopen = opened;
      sock.onmessage = function (msg) {
        if (ws === sock) { onFrame(msg.data); }
      };
      sock.onerror = function () { /* a close event follows */ };
      sock.onclose = function () {
        var quick;
        if (openTimer) { clearTimeout(openTimer); openTimer = null; }
        if (ws !== sock) { return; }
        ws = null;
        wsOpen = false;
        if (wsStableTimer) { clearTimeout(wsStableTimer); wsStableTimer = null; }
        requeueInFlight();
        if (unloading) { return; }
        quick = !openedAt || now() - openedAt < WS_MIN_LIFETIME;
        if (!quick) {
          attempt = 0;
          scheduleReconnect();
          return;
        }
        socketFailed();
      };
      if (alreadyOpen) {
        opened();
      } else {
        // Browsers may wait minutes for a handshake nobody answers: give up sooner, as if
        // the socket had been refused (after WS_MAX_FAILURES of those: long-polling).
        openTimer = setTimeout(function () {
          openTimer = null;
          if (ws !== sock || wsOpen) { return; }
          ws = null;
          try { sock.close(); } catch (e) { /* ignore */ }
          socketFailed();
        }, WS_OPEN_TIMEOUT);
      }
    }

    // Stop using a socket that looks dead (a send got no answer) without waiting for the
    // browser to notice: its close event is ignored once it is no longer `ws`.
    function dropSocket() {
      var sock = ws;
      if (!sock) { return; }
      ws = null;
      wsOpen = false;
      try { sock.close(); } catch (e) { /* ignore */ }
      requeueInFlight();
      scheduleReconnect();
    }

    // A WebSocket was refused or died at once. Refused because the session is gone: go
    // to the join page. Refused while HTTP works (a proxy that blocks upgrades, an origin
    // rule): after WS_MAX_FAILURES of those, long-poll and try WebSocket again later.
    function socketFailed() {
      setStatus("connecting");
      checkSession(function (result) {
        if (unloading) { return; }
        if (result === "gone") {
          goJoin();
          return;
        }
        if (result === "ok") {
          wsFailures++;
          if (wsFailures >= WS_MAX_FAILURES) {
            fallBack();
            return;
          }
        }
        scheduleReconnect();
      });
    }

    function fallBack() {
      fellBack = true;
      attempt = 0;
      transport = "longpoll";
      startPolling();
      scheduleProbe();
    }

    function scheduleProbe() {
      if (probeTimer) { clearTimeout(probeTimer); }
      probeTimer = setTimeout(probeSocket, WS_RETRY_INTERVAL);
    }

    function closeProbe() {
      var sock = probe;
      if (probeTimer) { clearTimeout(probeTimer); probeTimer = null; }
      probe = null;
      if (sock) {
        try { sock.close(); } catch (e) { /* ignore */ }
      }
    }

    // While long-polling after a fallback: does WebSocket work again? Switch only once a
    // socket has opened; stop the long-poll first so that one transport receives at a time.
    function probeSocket() {
      var sock, giveUp;
      probeTimer = null;
      if (unloading || !fellBack || transport !== "longpoll") { return; }
      try {
        sock = new win.WebSocket(socketUrl());
      } catch (e) {
        scheduleProbe();
        return;
      }
      probe = sock;
      giveUp = setTimeout(function () {
        if (probe === sock) {
          closeProbe();
          scheduleProbe();
        }
      }, WS_PROBE_TIMEOUT);
      sock.onopen = function () {
        if (probe !== sock) { return; }
        clearTimeout(giveUp);
        probe = null;
        stopPolling();
        clearRetry();
        fellBack = false;
        wsFailures = 0;
        attempt = 0;
        transport = "websocket";
        adoptSocket(sock, true);
      };
      sock.onclose = function () {
        if (probe !== sock) { return; }
        clearTimeout(giveUp);
        probe = null;
        scheduleProbe();
      };
    }

    function onFrame(raw) {
      var frame;
      try {
        frame = JSON.parse(raw);
      } catch (e) {
        return;
      }
      if (!frame || typeof frame !== "object") { return; }
      if (frame.type === "event") {
        receive([frame.event]);
      } else if (frame.type === "ack") {
        onAck(frame.client_id, frame.event);
      } else if (frame.type === "presence") {
        renderPresence(frame.nicks);
      } else if (frame.type === "error") {
        onErrorFrame(frame);
      }
    }

    function onErrorFrame(frame) {
      var item = frame.client_id ? byCid[frame.client_id] : null;
      if (frame.error === "no_session") {
        goJoin();
      } else if (item) {
        if (frame.error === "store_unavailable" || frame.error === "internal") {
          sendFailedTransiently(item);
        } else {
          markFailed(item, frame.message || frame.error);
        }
      } else if (frame.error === "bad_cursor") {
        reloadPage();
      } else {
        notice(frame.message || frame.error || "The server reported an error.");
      }
    }

    /* ================================================================ long-polling */

    function startPolling() {
      stopPolling();
      polling = true;
      setStatus("connecting", "longpoll");
      fetchPresence();
      presenceTimer = setInterval(fetchPresence, PRESENCE_INTERVAL);
      poll();
    }

    function stopPolling() {
      polling = false;
      pollToken = null;
      if (pollReq) {
        pollReq.abort();
        pollReq = null;
      }
      if (presenceTimer) { clearInterval(presenceTimer); presenceTimer = null; }
      if (presenceSoonTimer) { clearTimeout(presenceSoonTimer); presenceSoonTimer = null; }
    }

    function pollConnected() {
      if (polling && state !== "connected") {
        setStatus("connected", "longpoll");
        flushOutbox();
      }
    }

    function poll() {
      var token = {};
      if (!polling) { return; }
      pollToken = token;
      pollReq = request("GET", API + "/updates?cursor=" + encodeURIComponent(lastId), null,
        POLL_TIMEOUT, function (status, data) {
          if (pollToken !== token) { return; }
          pollReq = null;
          if (status === 200 && data) {
            attempt = 0;
            pollConnected();
            receive(data.events || []);
            poll();
          } else if (status === 400 && data && data.error === "bad_cursor") {
            reloadPage();
          } else if (status === 401) {
            goJoin();
          } else if (status === 0 && data && data.error === "timeout" && state === "connected") {
            poll();   // no answer in time: ask again (a dead connection gets dropped this way)
          } else {
            stopPolling();
            scheduleReconnect();
          }
        });
    }

    function fetchPresence() {
      request("GET", API + "/presence", null, 10000, function (status, data) {
        if (!polling) { return; }
        if (status === 200 && data && data.nicks) {
          renderPresence(data.nicks);
          pollConnected();
        } else if (status === 401) {
          goJoin();
        }
      });
    }

    function presenceSoon() {
      if (presenceSoonTimer || !polling) { return; }
      presenceSoonTimer = setTimeout(function () {
        presenceSoonTimer = null;
        fetchPresence();
      }, 300);
    }

    /* ================================================================ rendering events */

    function timeElement(ts) {
      var t = make("time");
      fillTime(t, ts);
      return t;
    }

    function renderEvent(ev) {
      var li = make("li", "ev");
      var meta, body;
      li.setAttribute("data-id", ev.id);
      li.setAttribute("data-nick", ev.nick);
      li.setAttribute("data-ts", String(ev.ts));
      if (ev.type === "message") {
        addClass(li, "msg");
        if (ev.nick === ME) { addClass(li, "own"); }
        meta = make("p", "meta");
        meta.appendChild(nickElement(ev.nick));
        meta.appendChild(doc.createTextNode(" "));
        meta.appendChild(timeElement(ev.ts));
        body = make("div", "text", ev.text === undefined ? "" : ev.text);
        body.setAttribute("dir", "auto");
        li.appendChild(meta);
        li.appendChild(body);
      } else {
        addClass(li, "notice");
        addClass(li, ev.type === "join" ? "is-join" : "is-leave");
        li.appendChild(nickElement(ev.nick));
        li.appendChild(doc.createTextNode(ev.type === "join" ? " joined " : " left "));
        li.appendChild(timeElement(ev.ts));
      }
      return li;
    }

    function isEvent(el) { return !!el && el.nodeType === 1 && el.hasAttribute("data-id"); }

    function isPending(el) { return !!el && el.nodeType === 1 && hasClass(el, "pending"); }

    // Where an event with this id goes in the live log: events in id order, then the
    // messages still being sent. Returns the element to insert before (null: at the end).
    function insertionPoint(id, skip) {
      var ref = null;
      var node = lastElement(log);
      while (node) {
        if (node !== skip) {
          if (isPending(node) || (isEvent(node) && node.getAttribute("data-id") > id)) {
            ref = node;
          } else {
            break;
          }
        }
        node = previousElement(node);
      }
      return ref;
    }

    function insertEvent(li) {
      log.insertBefore(li, insertionPoint(li.getAttribute("data-id"), null));
      regroup(li);
      regroup(nextElement(li));
    }

    // Consecutive messages of one person within GROUP_GAP are drawn as one block (the
    // repeated name stays in the page for screen readers, it is only hidden visually).
    function regroup(li) {
      var prev, dt, cont = false;
      if (!li || !hasClass(li, "msg")) { return; }
      prev = previousElement(li);
      if (!prev && li.parentNode === log) { prev = lastElement(olderList); }
      if (prev && hasClass(prev, "msg") && !hasClass(prev, "failed") && !hasClass(li, "failed") &&
          prev.getAttribute("data-nick") === li.getAttribute("data-nick")) {
        dt = parseFloat(li.getAttribute("data-ts")) - parseFloat(prev.getAttribute("data-ts"));
        cont = dt > -60 && dt < GROUP_GAP;
      }
      toggleClass(li, "cont", cont);
    }

    function regroupAll() {
      var lists = [olderList, log], i, node;
      for (i = 0; i < lists.length; i++) {
        for (node = firstElement(lists[i]); node; node = nextElement(node)) { regroup(node); }
      }
    }

    function removeNode(li) {
      var next;
      if (!li || !li.parentNode) { return; }
      next = nextElement(li);
      li.parentNode.removeChild(li);
      regroup(next);
    }

    /* ---- scrolling */

    function atBottom() {
      return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
    }

    function scrollToBottom() {
      scroller.scrollTop = scroller.scrollHeight;
      show(jumpBtn, false);
    }

    /* ---- events from either transport, in order */

    function receive(events) {
      var stick = atBottom();
      var added = 0, i, ev;
      for (i = 0; i < events.length; i++) {
        ev = events[i];
        if (ev && typeof ev.id === "string" && ev.id > lastId) {
          lastId = ev.id;
          if (acceptEvent(ev)) { added++; }
        }
      }
      if (!added) { return; }
      if (stick) {
        scrollToBottom();
      } else {
        show(jumpBtn, true);
      }
    }

    // Put one new event from the stream on screen; false if it was there already.
    function acceptEvent(ev) {
      var item;
      if (shown[ev.id]) {
        delete shown[ev.id];
        return false;
      }
      if (ev.type === "message" && ev.nick === ME) {
        item = (ev.client_id && byCid[ev.client_id]) || matchInFlight(ev);
        if (item) {
          confirmItem(item, ev);
          flushOutbox();
          return true;
        }
      }
      insertEvent(renderEvent(ev));
      if (ev.type === "message" && ev.nick !== ME && pageHidden()) {
        unread++;
        doc.title = "(" + unread + ") " + baseTitle;
      }
      if (ev.type === "join" || ev.type === "leave") { presenceSoon(); }
      return true;
    }

    // Our own message came back through the stream before its ack: the oldest message in
    // flight with the same text is that one (the server stores text trimmed, as we send it).
    function matchInFlight(ev) {
      var i;
      for (i = 0; i < outbox.length; i++) {
        if (outbox[i].status === "inflight" && outbox[i].text === ev.text) { return outbox[i]; }
      }
      return null;
    }

    /* ================================================================ older history */

    function oldestId() {
      var node = firstElement(olderList);
      if (!node) {
        node = firstElement(log);
        while (node && !isEvent(node)) { node = nextElement(node); }
      }
      return node ? node.getAttribute("data-id") : "";
    }

    function setHasMore(value) {
      hasMore = value;
      show(loadOlderBtn, hasMore);
      show(startNote, !hasMore);
    }

    function loadOlder() {
      var before = oldestId();
      if (loadingOlder) { return; }
      if (!before) {
        setHasMore(false);
        return;
      }
      loadingOlder = true;
      loadOlderBtn.disabled = true;
      setText(loadOlderBtn, "Loading\u2026");
      request("GET", API + "/history?before=" + encodeURIComponent(before) + "&limit=" + HISTORY_PAGE,
        null, 15000, function (status, data) {
          var frag, events, i, oldHeight, oldTop, hadFocus, anchor, anchorTop;
          loadingOlder = false;
          loadOlderBtn.disabled = false;
          setText(loadOlderBtn, "Load older messages");
          if (status === 401) {
            goJoin();
            return;
          }
          if (status !== 200 || !data) {
            setText(loadOlderBtn, "Could not load older messages \u2014 try again");
            return;
          }
          events = data.events || [];
          frag = doc.createDocumentFragment();
          for (i = 0; i < events.length; i++) {
            if (events[i] && typeof events[i].id === "string" && events[i].id < before) {
              frag.appendChild(renderEvent(events[i]));
            }
          }
          // Keep what was at the top where it was: by its own position, since regrouping
          // and the bar above can change heights too.
          anchor = firstElement(olderList) || firstElement(log);
          anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;
          oldHeight = scroller.scrollHeight;
          oldTop = scroller.scrollTop;
          olderList.insertBefore(frag, olderList.firstChild);
          regroupAll();
          hadFocus = doc.activeElement === loadOlderBtn;
          setHasMore(!!data.has_more && events.length > 0);
          if (anchor) {
            scroller.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
          } else {
            scroller.scrollTop = oldTop + (scroller.scrollHeight - oldHeight);
          }
          if (hadFocus && !hasMore) { scroller.focus(); }
        });
    }

    /* ================================================================ presence */

    function renderPresence(nicks) {
      var i, li, dot;
      if (!nicks || typeof nicks.length !== "number") { return; }
      while (peopleList.firstChild) { peopleList.removeChild(peopleList.firstChild); }
      for (i = 0; i < nicks.length; i++) {
        li = make("li", nicks[i] === ME ? "person me" : "person");
        dot = make("span", "dot c" + colorIndex(nicks[i]));
        dot.setAttribute("aria-hidden", "true");
        li.appendChild(dot);
        li.appendChild(nickElement(nicks[i]));
        if (nicks[i] === ME) { li.appendChild(make("span", "you", " (you)")); }
        peopleList.appendChild(li);
      }
      setText(peopleCount, String(nicks.length));
    }

    /* ================================================================ sending */

    function newClientId() {
      return now().toString(36) + "-" + Math.random().toString(36).slice(2, 10) +
        Math.random().toString(36).slice(2, 10);
    }

    function renderPending(item) {
      var li = make("li", "ev msg own pending");
      var meta = make("p", "meta");
      var body = make("div", "text", item.text);
      var fail = make("p", "fail");
      li.setAttribute("data-cid", item.cid);
      li.setAttribute("data-nick", ME);
      li.setAttribute("data-ts", String(now() / 1000));
      meta.appendChild(nickElement(ME));
      meta.appendChild(doc.createTextNode(" "));
      meta.appendChild(timeElement(now() / 1000));
      meta.appendChild(doc.createTextNode(" "));
      item.stateEl = make("span", "send-state", "sending\u2026");
      meta.appendChild(item.stateEl);
      body.setAttribute("dir", "auto");
      show(fail, false);
      item.failEl = fail;
      li.appendChild(meta);
      li.appendChild(body);
      li.appendChild(fail);
      return li;
    }

    function setItemLabel(item, text) {
      setText(item.stateEl, text);
    }

    function addToOutbox(cid, text) {
      var item = { cid: cid, text: text, status: "queued", tries: 0, timer: null, req: null };
      outbox.push(item);
      byCid[cid] = item;
      item.li = renderPending(item);
      log.appendChild(item.li);
      regroup(item.li);
      return item;
    }

    function forget(item) {
      var i;
      if (item.timer) { clearTimeout(item.timer); item.timer = null; }
      if (item.req) { item.req.abort(); item.req = null; }
      for (i = 0; i < outbox.length; i++) {
        if (outbox[i] === item) {
          outbox.splice(i, 1);
          break;
        }
      }
      delete byCid[item.cid];
      item.status = "done";
    }

    function submit() {
      var text = trim(input.value);
      var length = countChars(text);
      if (!text) { return; }
      if (length > MAX_TEXT) {
        setText(composerError, "A message can be at most " + MAX_TEXT + " characters long; this one has " +
          length + ".");
        show(composerError, true);
        return;
      }
      show(composerError, false);
      addToOutbox(newClientId(), text);
      input.value = "";
      composerChanged();
      scrollToBottom();
      flushOutbox();
    }

    // Send whatever is waiting, oldest first. Over HTTP one request at a time, so that
    // messages are stored in the order they were written.
    function flushOutbox() {
      var i, item;
      for (i = 0; i < outbox.length; i++) {
        item = outbox[i];
        if (item.status === "failed") { continue; }
        if (transport === "longpoll" && (item.status === "inflight" || item.timer)) { return; }
        if (item.status === "queued" && !item.timer) {
          if (!dispatch(item) || transport === "longpoll") { return; }
        }
      }
    }

    // Send one item now if the transport is up; false if it has to wait.
    function dispatch(item) {
      if (transport === "websocket") {
        if (!ws || !wsOpen) {
          setItemLabel(item, "waiting for connection\u2026");
          return false;
        }
        item.status = "inflight";
        setItemLabel(item, "sending\u2026");
        try {
          ws.send(JSON.stringify({ type: "send", text: item.text, client_id: item.cid }));
        } catch (e) {
          sendFailedTransiently(item);
          return false;
        }
        item.timer = setTimeout(function () {
          item.timer = null;
          if (item.status === "inflight") {
            // No ack: the connection is probably dead. Reconnect; the item goes out again
            // with the same client_id, and the server keeps one copy.
            dropSocket();
          }
        }, SEND_TIMEOUT);
        return true;
      }
      if (state !== "connected") {
        setItemLabel(item, "waiting for connection\u2026");
        return false;
      }
      item.status = "inflight";
      setItemLabel(item, "sending\u2026");
      item.req = request("POST", API + "/messages", { text: item.text, client_id: item.cid },
        SEND_TIMEOUT, function (status, data) {
          var code = data && data.error;
          item.req = null;
          if (item.status !== "inflight") { return; }
          if (status === 200 && data && data.event) {
            onAck(item.cid, data.event);
          } else if (status === 401 || code === "no_session") {
            goJoin();
          } else if (status === 403 && !item.xsrfRetried) {
            // No XSRF cookie yet: GET /api/session sets one, then try again.
            item.xsrfRetried = true;
            item.status = "queued";
            request("GET", "/api/session", null, 10000, function () { flushOutbox(); });
          } else if (status === 0 || status >= 500 || code === "store_unavailable") {
            sendFailedTransiently(item);
          } else {
            markFailed(item, (data && data.message) || failureText(status));
          }
        });
      return true;
    }

    function failureText(status) {
      if (status === 413) { return "The message is too large."; }
      if (status === 429) { return "You are sending too fast; wait a moment."; }
      if (status === 403) { return "The server refused the message (403)."; }
      return "The server refused the message (" + status + ").";
    }

    // Connection trouble, not a rule: send again later with the same client_id.
    function sendFailedTransiently(item) {
      var delay;
      if (item.timer) { clearTimeout(item.timer); }
      item.status = "queued";
      item.tries++;
      delay = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, item.tries - 1));
      delay = Math.round(delay * (1 + 0.3 * Math.random()));
      setItemLabel(item, "not sent yet \u2014 retrying\u2026");
      item.timer = setTimeout(function () {
        item.timer = null;
        flushOutbox();
      }, delay);
    }

    // The socket went away: whatever was in flight on it goes out again on the next one.
    function requeueInFlight() {
      var i, item;
      for (i = 0; i < outbox.length; i++) {
        item = outbox[i];
        if (item.status === "inflight") {
          if (item.timer) { clearTimeout(item.timer); item.timer = null; }
          if (item.req) { item.req.abort(); item.req = null; }
          item.status = "queued";
          setItemLabel(item, "waiting for connection\u2026");
        }
      }
    }

    function onAck(cid, ev) {
      var item = cid ? byCid[cid] : null;
      if (!ev || typeof ev.id !== "string") { return; }
      if (!item) {
        // Already matched through the stream, or sent before a reload: nothing to replace.
        if (ev.id > lastId && !shown[ev.id]) {
          shown[ev.id] = true;
          insertEvent(renderEvent(ev));
        }
        return;
      }
      if (ev.id <= lastId || shown[ev.id]) {
        // The stream showed this event already (or it was stored before this page).
        forget(item);
        removeNode(item.li);
      } else {
        shown[ev.id] = true;
        confirmItem(item, ev);
      }
      flushOutbox();
    }

    // Turn the dimmed "sending" line into the stored event, in place.
    function confirmItem(item, ev) {
      var li = item.li, ref, timeEl, body;
      forget(item);
      if (!li.parentNode) { return; }
      removeClass(li, "pending");
      removeClass(li, "failed");
      li.removeAttribute("data-cid");
      li.setAttribute("data-id", ev.id);
      li.setAttribute("data-ts", String(ev.ts));
      if (item.stateEl && item.stateEl.parentNode) {
        item.stateEl.parentNode.removeChild(item.stateEl.previousSibling);
        item.stateEl.parentNode.removeChild(item.stateEl);
      }
      if (item.failEl && item.failEl.parentNode) { item.failEl.parentNode.removeChild(item.failEl); }
      timeEl = li.getElementsByTagName("time")[0];
      if (timeEl) { fillTime(timeEl, ev.ts); }
      body = li.getElementsByTagName("div")[0];
      if (body && typeof ev.text === "string" && body.textContent !== ev.text) { setText(body, ev.text); }
      ref = insertionPoint(ev.id, li);
      if (ref !== nextElement(li)) {
        log.insertBefore(li, ref);
      }
      regroup(li);
      regroup(nextElement(li));
    }

    function markFailed(item, message) {
      var fail = item.failEl, actions;
      if (item.timer) { clearTimeout(item.timer); item.timer = null; }
      item.status = "failed";
      addClass(item.li, "failed");
      setItemLabel(item, "not sent");
      while (fail.firstChild) { fail.removeChild(fail.firstChild); }
      fail.setAttribute("role", "alert");
      fail.appendChild(make("span", "visually-hidden", "Not sent: "));
      fail.appendChild(make("span", "fail-text", message));
      actions = make("span", "fail-actions");
      actions.appendChild(actionButton("Retry", "retry", function () {
        show(fail, false);
        removeClass(item.li, "failed");
        item.status = "queued";
        item.tries = 0;
        item.xsrfRetried = false;
        setItemLabel(item, "sending\u2026");
        flushOutbox();
        input.focus();
      }));
      actions.appendChild(actionButton("Edit", "edit", function () {
        var draft = trim(input.value);
        input.value = draft ? draft + "\n" + item.text : item.text;
        forget(item);
        removeNode(item.li);
        composerChanged();
        input.focus();
      }));
      actions.appendChild(actionButton("Discard", "discard", function () {
        forget(item);
        removeNode(item.li);
        input.focus();
        flushOutbox();
      }));
      fail.appendChild(actions);
      show(fail, true);
      regroup(item.li);
      regroup(nextElement(item.li));
      flushOutbox();
    }

    function actionButton(label, kind, fn) {
      var b = make("button", "link-button " + kind, label);
      b.type = "button";
      on(b, "click", fn);
      return b;
    }

    /* ---- the outbox survives a reload of this tab (same client_ids: no duplicates) */

    function saveOutbox() {
      var items = [], i;
      if (!session) { return; }
      for (i = 0; i < outbox.length; i++) {
        items.push({ cid: outbox[i].cid, text: outbox[i].text });
      }
      try {
        if (items.length || trim(input.value)) {
          session.setItem(OUTBOX_KEY, JSON.stringify({ items: items, draft: input.value }));
        } else {
          session.removeItem(OUTBOX_KEY);
        }
      } catch (e) { /* storage full */ }
    }

    function restoreOutbox() {
      var saved = null, i, items;
      if (!session) { return; }
      try {
        saved = JSON.parse(session.getItem(OUTBOX_KEY) || "null");
        session.removeItem(OUTBOX_KEY);
      } catch (e) {
        saved = null;
      }
      if (!saved) { return; }
      if (typeof saved.draft === "string" && !input.value) { input.value = saved.draft; }
      items = saved.items || [];
      for (i = 0; i < items.length; i++) {
        if (items[i] && typeof items[i].cid === "string" && typeof items[i].text === "string") {
          addToOutbox(items[i].cid, items[i].text);
        }
      }
    }

    /* ================================================================ composer */

    function autosize() {
      var extra;
      input.style.height = "";
      if (input.scrollHeight > input.clientHeight) {
        extra = input.offsetHeight - input.clientHeight;
        input.style.height = (input.scrollHeight + extra) + "px";
      }
    }

    function composerChanged() {
      var length = countChars(trim(input.value));
      autosize();
      if (length >= COUNTER_FROM) {
        setText(counter, length + " / " + MAX_TEXT);
        toggleClass(counter, "over", length > MAX_TEXT);
        show(counter, true);
      } else {
        show(counter, false);
      }
      if (length <= MAX_TEXT) { show(composerError, false); }
    }

    /* ================================================================ presence of the reader */

    function pageHidden() { return doc.hidden === true; }

    function onVisibility() {
      if (!pageHidden()) {
        unread = 0;
        doc.title = baseTitle;
        retryNow();   // back from the background: don't sit out a long back-off
      }
    }

    /* ================================================================ start */

    function start() {
      var node, nodes, i, times;

      // Times were rendered as UTC by the server; show them in local time.
      nodes = main.getElementsByTagName("li");
      for (i = 0; i < nodes.length; i++) {
        node = nodes[i];
        if (node.hasAttribute("data-ts")) {
          times = node.getElementsByTagName("time");
          if (times.length) { fillTime(times[0], node.getAttribute("data-ts")); }
        }
        if (isEvent(node) && node.getAttribute("data-id") > lastId) { lastId = node.getAttribute("data-id"); }
      }
      regroupAll();
      setHasMore(hasMore);

      // On a narrow screen the people list starts folded (it is a <details>).
      if (people && win.matchMedia && win.matchMedia("(max-width: 40em)").matches) {
        people.removeAttribute("open");
      }

      on(form, "submit", function (e) {
        e.preventDefault();
        submit();
      });
      on(input, "keydown", function (e) {
        var key = e.key || "";
        if ((key === "Enter" || e.keyCode === 13) && !e.shiftKey && !e.altKey &&
            !e.isComposing && e.keyCode !== 229) {
          e.preventDefault();
          submit();
        }
      });
      on(input, "input", composerChanged);
      on(scroller, "scroll", function () {
        if (isShown(jumpBtn) && atBottom()) { show(jumpBtn, false); }
      });
      on(jumpBtn, "click", function () {
        scrollToBottom();
        input.focus();
      });
      on(loadOlderBtn, "click", loadOlder);
      on(retryBtn, "click", function () {
        attempt = Math.max(0, attempt - 1);
        retryNow();
      });
      on(leaveBtn, "click", function () {
        leaveBtn.disabled = true;
        leaving = true;
        request("DELETE", "/api/session", null, 10000, function (status) {
          if (status === 0) {
            leaving = false;
            leaveBtn.disabled = false;
            notice("Could not reach the server to leave; try again.");
            if (!ws && !polling && !retryTimer) { connect(); }
            return;
          }
          outbox = [];
          input.value = "";
          saveOutbox();
          shutdown();
          win.location.href = "/";
        });
      });

      // Keep the newest line in view when the viewport changes (e.g. a phone keyboard).
      (function () {
        var pinned = true;
        on(scroller, "scroll", function () { pinned = atBottom(); });
        on(win, "resize", function () { if (pinned) { scroller.scrollTop = scroller.scrollHeight; } });
      }());

      on(doc, "visibilitychange", onVisibility);
      on(win, "online", function () {
        attempt = 0;
        retryNow();
      });
      on(win, "offline", function () {
        if (retryTimer) { setStatus("offline"); }
      });
      on(win, "pagehide", function () {
        saveOutbox();
        unloading = true;
      });
      on(win, "pageshow", function (e) {
        if (e.persisted) {
          unloading = false;
          if (!ws && !polling && !retryTimer) { connect(); }
        }
      });

      // The read-only hook end-to-end tests use (they also watch data-state/data-transport).
      win.chatapp = {
        transport: function () { return transport; },
        state: function () { return state; },
        lastId: function () { return lastId; }
      };
      if (Object.freeze) { Object.freeze(win.chatapp); }

      // The composer is disabled in the HTML: without this script it could not send.
      input.disabled = false;
      if (byId("send")) { byId("send").disabled = false; }

      restoreOutbox();
      composerChanged();
      scrollToBottom();
      if (win.matchMedia && win.matchMedia("(pointer: fine)").matches) { input.focus(); }
      connect();
    }

    start();
  }

  var chat = byId("chat");
  if (chat) { initRoom(chat); } else { initJoin(); }
}());
