/*
 * chatapp browser client: who is typing. Sends a typing signal while I type (at most every
 * TYPING_EVERY ms, as the contract asks: a WebSocket frame, or POST .../typing when
 * long-polling), and shows the others' typing line ("an is typing…") from typing frames or
 * the long-poll's "typing" list. The line is a polite live region (templates/room.html).
 *
 * The server ends a typist 6 s after their last signal or when they send; the line also
 * drops someone at once when their message arrives here (seen()).
 *
 * chatapp.Typing(ctx, transport) -> {start, render(nicks), seen(ev), sent()}
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;

  var TYPING_EVERY = 3000;         // the contract: the page signals at most every 3 s
  var NAMES_SHOWN = 2;             // "an, bo and 3 others are typing"

  chatapp.Typing = function (ctx, transport) {
    var line = c.byId("typing");
    var lastSignal = 0;
    var nicks = [];

    function signal() {
      var now = c.now();
      if (now - lastSignal < TYPING_EVERY || !c.trim(ctx.input.value)) { return; }
      lastSignal = now;
      if (!transport.send({ type: "typing" })) {
        c.request("POST", ctx.api + "/typing", null, 10000, function () { /* best effort */ });
      }
    }

    function text(others) {
      var n = others.length;
      if (n === 0) { return ""; }
      if (n === 1) { return t("typing.one", { a: others[0] }); }
      if (n === 2) { return t("typing.two", { a: others[0], b: others[1] }); }
      if (n === 3 && NAMES_SHOWN >= 3) { return t("typing.three", { a: others[0], b: others[1], c: others[2] }); }
      return t("typing.many", { a: others[0], b: others[1], n: n - NAMES_SHOWN });
    }

    function draw() {
      var others = [], i;
      for (i = 0; i < nicks.length; i++) {
        if (nicks[i] !== ctx.me) { others.push(String(nicks[i])); }
      }
      if (line) {
        c.setText(line, text(others));
        line.setAttribute("data-nicks", others.join(","));
      }
    }

    function render(list) {
      if (!list || typeof list.length !== "number") { return; }
      nicks = list.slice(0);
      draw();
    }

    // A message from a typist: they stopped (the server's frame may come a moment later).
    function seen(ev) {
      var i;
      if (ev.type !== "message") { return; }
      for (i = nicks.length - 1; i >= 0; i--) {
        if (nicks[i] === ev.nick) { nicks.splice(i, 1); draw(); }
      }
    }

    return {
      start: function () { c.on(ctx.input, "input", signal); },
      render: render,
      seen: seen,
      // I sent: my next keystroke may signal at once (the server counts it too).
      sent: function () { lastSignal = 0; }
    };
  };
}());
