/*
 * chatapp browser client: the connection. A WebSocket when it works, long-polling when it
 * does not (a proxy that blocks upgrades, a browser without WebSocket; the polling itself is
 * longpoll.js), reconnection with back-off, and the status line at the top of the page.
 *
 * One transport receives at a time: while long-polling after a fallback, a WebSocket is
 * probed now and then and replaces the poll only once it has opened. Events reach
 * hooks.onEvents in the order the server sent them; the cursor is hooks.cursor() (the log
 * view's last id), so a reconnection resumes exactly where the page is.
 *
 * chatapp.Transport(ctx, hooks) -> {connect, retryNow, shutdown, send, kind, isUp, state,
 *   dropSocket, resetBackoff, offline, fellBack}
 * hooks: cursor(), onEvents(events), onFrame(frame) (ack / error frames), onPresence(nicks),
 *   onTyping(nicks) (typing frames, or the long-poll's typing list),
 *   onUp() (ready to send), onDown() (what was in flight on a dead socket goes again),
 *   sessionGone(), badCursor(), setStatus(state, transport).
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var win = window;

  var BACKOFF_MIN = 1000;          // first reconnect delay (ms), doubled on every failure...
  var BACKOFF_MAX = 30000;         // ...up to this, plus up to 30% random jitter
  var WS_MIN_LIFETIME = 5000;      // a WebSocket that dies sooner than this "did not work"
  var WS_MAX_FAILURES = 2;         // that many in a row (server reachable): use long-polling
  var WS_RETRY_INTERVAL = 60000;   // while on long-polling after a fallback, try WebSocket again
  var WS_PROBE_TIMEOUT = 15000;
  var WS_OPEN_TIMEOUT = 10000;     // a handshake unanswered by then (a proxy that swallows it) failed

  // Back-off with 30% jitter, so that clients cut off together do not come back together.
  function backoff(tries) {
    var base = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, tries));
    return Math.round(base * (1 + 0.3 * Math.random()));
  }

  chatapp.backoff = backoff;

  chatapp.Transport = function (ctx, hooks) {
    var api = ctx.api;
    var transport = win.WebSocket ? "websocket" : "longpoll";
    var state = "";
    var reported = "";       // the transport last reported with the state
    var ws = null;           // the receiving WebSocket (open or opening)
    var wsOpen = false;
    var wsStableTimer = null;
    var wsFailures = 0;      // consecutive WebSockets that failed while HTTP worked
    var fellBack = false;    // on long-polling because WebSocket did not work
    var probe = null;        // a WebSocket being tried while on long-polling
    var probeTimer = null;
    var attempt = 0;         // consecutive failed (re)connections, for the back-off
    var retryTimer = null;
    var retryAt = 0;
    var countdownTimer = null;
    var unloading = false;

    /* ---- status */

    // Reported only when it changes: the page's data-state is watched (tests count changes).
    function setStatus(newState, newTransport) {
      if (newTransport) { transport = newTransport; }
      if (newState !== state || transport !== reported) {
        state = newState;
        reported = transport;
        hooks.setStatus(state, transport);
      }
      renderStatus();
    }

    function renderStatus() {
      var how = t(transport === "websocket" ? "status.websocket" : "status.longpoll");
      if (fellBack && transport === "longpoll") { how = t("status.longpoll.fellback"); }
      c.setText(ctx.statusText, t("status.line", { how: how, what: t("status." + state) }));
      if (ctx.statusEl) { ctx.statusEl.className = "status is-" + state; }
      c.show(ctx.retryBtn, !!retryTimer);
      renderCountdown();
    }

    function renderCountdown() {
      var left;
      if (retryTimer && retryAt) {
        left = Math.max(1, Math.ceil((retryAt - c.now()) / 1000));
        c.setText(ctx.statusCount, chatapp.tn(state === "offline" ? "status.retry.offline" : "status.retry", left));
      } else {
        c.setText(ctx.statusCount, "");
      }
    }

    /* ---- reconnecting */

    function clearRetry() {
      if (retryTimer) { clearTimeout(retryTimer); }
      if (countdownTimer) { clearInterval(countdownTimer); }
      retryTimer = null;
      countdownTimer = null;
      retryAt = 0;
    }

    // Exponential back-off with jitter; then connect() again with the current transport.
    function scheduleReconnect() {
      var delay;
      if (unloading) { return; }
      clearRetry();
      delay = backoff(attempt);
      attempt++;
      retryAt = c.now() + delay;
      retryTimer = setTimeout(function () {
        clearRetry();
        connect();
      }, delay);
      countdownTimer = setInterval(renderCountdown, 1000);
      setStatus(win.navigator.onLine === false ? "offline" : "reconnecting");
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

    // connect() unless something is already connected or on its way.
    function ensureConnected() {
      if (!ws && !poller.active() && !retryTimer) { connect(); }
    }

    function shutdown() {
      var sock = ws;
      unloading = true;
      clearRetry();
      stopPolling();
      closeProbe();
      if (sock) {
        ws = null;
        wsOpen = false;
        try { sock.close(); } catch (e) { /* gone already */ }
      }
    }

    // After a WebSocket failed: is the server there, and is our session alive?
    function checkSession(cb) {
      c.request("GET", "/api/session", null, 10000, function (status, data) {
        if (status === 200 && data) {
          cb(data.nick ? "ok" : "gone");
        } else if (status === 401) {
          cb("gone");
        } else {
          cb("unknown");
        }
      });
    }

    /* ---- WebSocket */

    function socketUrl() {
      return (win.location.protocol === "https:" ? "wss:" : "ws:") + "//" + win.location.host +
        api + "/ws?cursor=" + encodeURIComponent(hooks.cursor());
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
        openedAt = c.now();
        wsOpen = true;
        setStatus("connected", "websocket");
        if (wsStableTimer) { clearTimeout(wsStableTimer); }
        wsStableTimer = setTimeout(function () {
          if (ws === sock && wsOpen) {
            wsFailures = 0;
            attempt = 0;
          }
        }, WS_MIN_LIFETIME);
        hooks.onUp();
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
        hooks.onDown();
        if (unloading) { return; }
        quick = !openedAt || c.now() - openedAt < WS_MIN_LIFETIME;
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
      hooks.onDown();
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
          hooks.sessionGone();
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

    // One dispatch per frame type; a type this page does not know is ignored.
    function onFrame(raw) {
      var frame;
      try {
        frame = JSON.parse(raw);
      } catch (e) {
        return;
      }
      if (!frame || typeof frame !== "object") { return; }
      if (frame.type === "event") {
        hooks.onEvents([frame.event]);
      } else if (frame.type === "presence") {
        hooks.onPresence(frame.nicks);
      } else if (frame.type === "typing") {
        hooks.onTyping(frame.nicks);
      } else if (frame.type === "ack" || frame.type === "error") {
        hooks.onFrame(frame);
      }
    }

    // Send a frame on the open WebSocket; false if there is none (or it broke).
    function send(frame) {
      if (transport !== "websocket" || !ws || !wsOpen) { return false; }
      try {
        ws.send(JSON.stringify(frame));
      } catch (e) {
        return false;
      }
      return true;
    }

    /* ---- long-polling (longpoll.js) */

    var poller = chatapp.LongPoll(ctx, {
      cursor: hooks.cursor,
      onEvents: hooks.onEvents,
      onPresence: hooks.onPresence,
      onTyping: hooks.onTyping,
      badCursor: hooks.badCursor,
      sessionGone: hooks.sessionGone,
      refused: function (data) { hooks.onFrame(data); },
      state: function () { return state; },
      connecting: function () { setStatus("connecting", "longpoll"); },
      connected: function () {
        if (state !== "connected") {
          setStatus("connected", "longpoll");
          hooks.onUp();
        }
      },
      answered: function () { attempt = 0; },
      failed: scheduleReconnect
    });

    function startPolling() { poller.start(); }

    function stopPolling() { poller.stop(); }

    return {
      connect: connect,
      ensureConnected: ensureConnected,
      retryNow: retryNow,
      shutdown: shutdown,
      // After a page restored from the back/forward cache.
      resume: function () {
        unloading = false;
        ensureConnected();
      },
      // The page is going away: no reconnecting from here on.
      unload: function () { unloading = true; },
      // Try again after the back-off (a refused cursor that a reload did not cure).
      reconnectLater: function () {
        stopPolling();
        scheduleReconnect();
      },
      send: send,
      dropSocket: dropSocket,
      presenceSoon: function () { poller.presenceSoon(); },
      kind: function () { return transport; },
      state: function () { return state; },
      // Can a message go out now? Over HTTP: once a long-poll has been answered.
      isUp: function () { return transport === "websocket" ? !!ws && wsOpen : state === "connected"; },
      // The "Retry now" button and coming back online: skip (some of) the back-off.
      resetBackoff: function (all) { attempt = all ? 0 : Math.max(0, attempt - 1); },
      offline: function () { if (retryTimer) { setStatus("offline"); } }
    };
  };
}());
