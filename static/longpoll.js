/*
 * chatapp browser client: long-polling, the transport for browsers and networks where a
 * WebSocket does not work. GET .../updates?cursor= in a loop (the server answers at once
 * when there is something newer, else after poll_timeout). Each poll asks for signals too
 * (&signals=<version>): the server answers as soon as presence or typing changed, with both
 * lists; GET .../presence now and then as well, for a server without signals. Sending goes
 * over HTTP (outbox.js).
 *
 * transport.js owns the choice of transport and the back-off; this file only polls.
 * chatapp.LongPoll(ctx, link) -> {start, stop, active, presenceSoon}
 * link: cursor(), onEvents(events), onPresence(nicks), onTyping(nicks), badCursor(), sessionGone(), state(),
 *   connecting(), connected() (an answer came: "connected"), answered() (reset the back-off),
 *   failed() (stopped: reconnect after the back-off).
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;

  var POLL_TIMEOUT = 70000;        // the server answers a long-poll within poll_timeout (25 s)
  var PRESENCE_INTERVAL = 30000;   // long-polling only; WebSocket pushes presence frames
  var PRESENCE_SOON = 300;         // ms after a join or leave: ask who is here

  chatapp.LongPoll = function (ctx, link) {
    var polling = false;
    var pollToken = null;
    var pollReq = null;
    var presenceTimer = null;
    var presenceSoonTimer = null;
    var signals = "";        // the version of presence and typing the page has ("" at first)

    function start() {
      stop();
      polling = true;
      link.connecting();
      fetchPresence();
      presenceTimer = setInterval(fetchPresence, PRESENCE_INTERVAL);
      poll();
    }

    function stop() {
      polling = false;
      pollToken = null;
      if (pollReq) {
        pollReq.abort();
        pollReq = null;
      }
      if (presenceTimer) { clearInterval(presenceTimer); presenceTimer = null; }
      if (presenceSoonTimer) { clearTimeout(presenceSoonTimer); presenceSoonTimer = null; }
    }

    function connected() {
      if (polling) { link.connected(); }
    }

    function poll() {
      var token = {};
      if (!polling) { return; }
      pollToken = token;
      pollReq = c.request("GET", ctx.api + "/updates?cursor=" + encodeURIComponent(link.cursor()) +
        "&signals=" + encodeURIComponent(signals), null,
        POLL_TIMEOUT, function (status, data) {
          if (pollToken !== token) { return; }
          pollReq = null;
          if (status === 200 && data) {
            link.answered();
            connected();
            link.onEvents(data.events || []);
            if (typeof data.signals === "string") {
              signals = data.signals;
              link.onPresence(data.presence);
              link.onTyping(data.typing);
            }
            poll();
          } else if (status === 400 && data && data.error === "bad_cursor") {
            link.badCursor();
          } else if (status === 401) {
            link.sessionGone();
          } else if (status === 403 && data && (data.error === "kicked" || data.error === "banned")) {
            stop();
            link.refused(data);   // put out of the room by a moderator (moderation.js)
          } else if (status === 0 && data && data.error === "timeout" && link.state() === "connected") {
            poll();   // no answer in time: ask again (a dead connection gets dropped this way)
          } else {
            stop();
            link.failed();
          }
        });
    }

    function fetchPresence() {
      c.request("GET", ctx.api + "/presence", null, 10000, function (status, data) {
        if (!polling) { return; }
        if (status === 200 && data && data.nicks) {
          link.onPresence(data.nicks);
          connected();
        } else if (status === 401) {
          link.sessionGone();
        }
      });
    }

    // Long-polling learns of presence changes by asking: soon after a join or a leave.
    function presenceSoon() {
      if (presenceSoonTimer || !polling) { return; }
      presenceSoonTimer = setTimeout(function () {
        presenceSoonTimer = null;
        fetchPresence();
      }, PRESENCE_SOON);
    }

    return {
      start: start,
      stop: stop,
      active: function () { return polling; },
      presenceSoon: presenceSoon
    };
  };
}());
