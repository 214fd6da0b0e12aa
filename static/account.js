/* The room page's "Your nickname" panel: register the nickname with a password, or delete
 * the account. ES5, no framework; text is only ever set with textContent.
 * API: GET /api/account -> {nick, registered}; POST {password} registers (201);
 * DELETE {password} deletes the account (this device goes on as a guest). */
(function () {
  "use strict";

  function byId(id) { return document.getElementById(id); }

  function cookie(name) {
    var parts = document.cookie.split("; ");
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].substring(0, eq) === name) { return decodeURIComponent(parts[i].substring(eq + 1)); }
    }
    return "";
  }

  function request(method, body, done) {
    var xhr = new XMLHttpRequest();
    xhr.open(method, "/api/account");
    xhr.setRequestHeader("Content-Type", "application/json");
    xhr.setRequestHeader("X-XSRFToken", cookie("_xsrf"));
    xhr.onreadystatechange = function () {
      if (xhr.readyState !== 4) { return; }
      var data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
      done(xhr.status, data);
    };
    xhr.send(body === null ? null : JSON.stringify(body));
  }

  function start() {
    var form = byId("account-form");
    if (!form) { return; }
    var status = byId("account-status");
    var password = byId("account-password");
    var submit = byId("account-submit");
    var error = byId("account-error");
    var registered = false;

    function show(state) {
      registered = state.registered;
      status.textContent = registered
        ? "\u201c" + state.nick + "\u201d is registered: log in with it on any device. " +
          "Deleting the account frees the nickname."
        : "Register \u201c" + state.nick + "\u201d with a password so that nobody else can take it.";
      submit.textContent = registered ? "Delete account" : "Register";
      password.setAttribute("autocomplete", registered ? "current-password" : "new-password");
      form.hidden = false;
    }

    function fail(message) {
      error.textContent = message;
      error.hidden = false;
    }

    request("GET", null, function (code, data) {
      if (code === 200 && data) { show(data); }
    });

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      error.hidden = true;
      submit.disabled = true;
      request(registered ? "DELETE" : "POST", { password: password.value }, function (code, data) {
        submit.disabled = false;
        if (code === 200 || code === 201) {
          password.value = "";
          show({ nick: data.nick, registered: code === 201 });
        } else {
          fail(data && data.message ? data.message : "The server could not be reached; try again.");
        }
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
