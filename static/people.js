/*
 * chatapp browser client: who is here. The list beside the conversation, drawn from the
 * page data at first, then from presence frames (WebSocket) or GET .../presence (long-poll).
 *
 * chatapp.People(ctx) -> {render(nicks)}
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;

  chatapp.People = function (ctx) {
    var list = ctx.peopleList;
    var count = ctx.peopleCount;

    function render(nicks) {
      var i, li, dot;
      if (!nicks || typeof nicks.length !== "number") { return; }
      c.empty(list);
      for (i = 0; i < nicks.length; i++) {
        li = c.make("li", nicks[i] === ctx.me ? "person me" : "person");
        dot = c.make("span", "dot c" + c.colorIndex(String(nicks[i])));
        dot.setAttribute("aria-hidden", "true");
        li.appendChild(dot);
        li.appendChild(c.nickElement(String(nicks[i])));
        if (nicks[i] === ctx.me) { li.appendChild(c.make("span", "you", t("people.you"))); }
        list.appendChild(li);
      }
      c.setText(count, String(nicks.length));
    }

    return { render: render };
  };
}());
