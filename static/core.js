/*
 * chatapp browser client: what every other file shares. DOM helpers, the one XMLHttpRequest
 * wrapper (and the XSRF token it sends), local time in the browser's locale, the nick colour.
 *
 * Plain ES5 on purpose: old browsers are users too. No build step, no framework, no
 * let/const, arrow functions, template strings, classes, Promise or fetch; tests/test_es5.py
 * fails on anything newer in static/*.js. The files are loaded in order by the page
 * (templates/base.html, room.html): i18n, strings, core, events, longpoll, transport,
 * outbox, logview, older, actions, composer, people, account, chat. Each adds itself to
 * window.chatapp and runs nothing on load except account.js (its panel) and chat.js, which
 * starts the page.
 *
 * Everything the server or another person supplied reaches the page through textContent
 * or createTextNode (make(), setText() below), never innerHTML.
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var doc = document;
  var win = window;

  function byId(id) { return doc.getElementById(id); }

  function now() { return new Date().getTime(); }

  function on(target, type, fn) {
    if (target && target.addEventListener) { target.addEventListener(type, fn, false); }
  }

  function trim(s) { return String(s).replace(/^\s+|\s+$/g, ""); }

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

  // A new element; text (if given) as a text node: never parsed as markup.
  function make(tag, cls, text) {
    var el = doc.createElement(tag);
    if (cls) { el.className = cls; }
    if (text !== undefined && text !== null) { el.appendChild(doc.createTextNode(String(text))); }
    return el;
  }

  function button(label, cls, fn) {
    var b = make("button", cls, label);
    b.type = "button";
    if (fn) { on(b, "click", fn); }
    return b;
  }

  function setText(el, text) {
    if (el) { el.textContent = text; }
  }

  function empty(el) {
    while (el && el.firstChild) { el.removeChild(el.firstChild); }
  }

  function removeNode(el) {
    if (el && el.parentNode) { el.parentNode.removeChild(el); }
  }

  // Length in code points, like the server (Python's len), not UTF-16 units.
  function countChars(s) { return s.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, "_").length; }

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

  // The nearest ancestor (or el itself) with this class, inside stop; null if none.
  function closest(el, cls, stop) {
    while (el && el !== stop && el.nodeType === 1) {
      if (hasClass(el, cls)) { return el; }
      el = el.parentNode;
    }
    return null;
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

  function toDate(ts) {
    var d = new Date(parseFloat(ts) * 1000);
    return isFinite(d.getTime()) ? d : new Date();
  }

  // In the browser's locale (static/i18n.js: time, dateTime): the time of day for an event of
  // today, with the date in front for another day (and the year for another year). Without
  // i18n.js, the browser's own default format.
  function formatTime(d) {
    var i18n = win.chatappI18n;
    var today = new Date();
    var sameDay = d.getFullYear() === today.getFullYear() && d.getMonth() === today.getMonth() &&
      d.getDate() === today.getDate();
    if (!i18n) { return sameDay ? d.toLocaleTimeString() : d.toLocaleString(); }
    return sameDay ? i18n.time(d) : i18n.dateTime(d);
  }

  // The full date and time, for a tooltip.
  function longDateTime(d) {
    var i18n = win.chatappI18n;
    return i18n && i18n.fullDateTime ? i18n.fullDateTime(d) : d.toLocaleString();
  }

  function fillTime(timeEl, ts) {
    var d = toDate(ts);
    timeEl.setAttribute("datetime", d.toISOString());
    timeEl.setAttribute("title", longDateTime(d));
    setText(timeEl, formatTime(d));
  }

  function timeElement(ts) {
    var t = make("time");
    fillTime(t, ts);
    return t;
  }

  /* ------------------------------------------------------------------ nick colours */

  // One of 8 name colours per nickname, the only copy of this hash: a polynomial over code
  // points, modulo a prime (2^31 - 1) so short names spread over the 8 colours; every step
  // stays below 2^53, so it is exact in JavaScript numbers.
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

  function newClientId() {
    return now().toString(36) + "-" + Math.random().toString(36).slice(2, 10) +
      Math.random().toString(36).slice(2, 10);
  }

  chatapp.core = {
    byId: byId, now: now, on: on, trim: trim, hasClass: hasClass, addClass: addClass,
    removeClass: removeClass, toggleClass: toggleClass, show: show, isShown: isShown,
    make: make, button: button, setText: setText, empty: empty, removeNode: removeNode,
    countChars: countChars, nextElement: nextElement, previousElement: previousElement,
    firstElement: firstElement, lastElement: lastElement, closest: closest,
    getStorage: getStorage, request: request, xsrfToken: xsrfToken, toDate: toDate,
    formatTime: formatTime, longDateTime: longDateTime, fillTime: fillTime, timeElement: timeElement, colorIndex: colorIndex,
    nickElement: nickElement, newClientId: newClientId
  };
}());
