/* chatapp browser client: the room page's "Your nickname" panel. Register the nickname with
 * a password, or delete the account. Text is only ever set with textContent; its words come
 * from static/strings.js (chatapp.t), its requests go through chatapp.core.request (the one
 * XMLHttpRequest wrapper, which sends the XSRF token).
 * API: GET /api/account -> {nick, registered}; POST {password} registers (201);
 * DELETE {password} deletes the account (200; this device goes on as a guest).
 * Plain ES5 (tests/test_es5.py). The trap: the panel stays hidden until the GET answers, so
 * a server without accounts shows nothing rather than a form that cannot work.
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var URL = "/api/account";
  // Generous: hashing a password (argon2id) takes the server a moment, on a busy one longer.
  var TIMEOUT_MS = 30000;

  function start() {
    var form = c.byId("account-form");
    if (!form) { return; }
    var status = c.byId("account-status");
    var password = c.byId("account-password");
    var submit = c.byId("account-submit");
    var error = c.byId("account-error");
    var registered = false;

    function render(state) {
      registered = !!state.registered;
      c.setText(status, t(registered ? "account.registered" : "account.unregistered",
                          { nick: state.nick }));
      c.setText(submit, t(registered ? "account.delete" : "account.register"));
      password.setAttribute("autocomplete", registered ? "current-password" : "new-password");
      c.show(form, true);
    }

    function fail(message) {
      c.setText(error, message);
      c.show(error, true);
    }

    c.request("GET", URL, null, TIMEOUT_MS, function (code, data) {
      if (code === 200 && data) { render(data); }
    });

    c.on(form, "submit", function (ev) {
      ev.preventDefault();
      c.show(error, false);
      submit.disabled = true;
      c.request(registered ? "DELETE" : "POST", URL, { password: password.value }, TIMEOUT_MS,
        function (code, data) {
          submit.disabled = false;
          if ((code === 200 || code === 201) && data) {
            password.value = "";
            render({ nick: data.nick, registered: code === 201 });
          } else if (code === 0) {
            fail(t("account.unreachable"));
          } else {
            fail(data && data.message ? data.message : t("account.refused", { status: code }));
          }
        });
    });
  }

  chatapp.account = { start: start };

  if (document.readyState === "loading") {
    c.on(document, "DOMContentLoaded", start);
  } else {
    start();
  }
}());
