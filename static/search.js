/*
 * chatapp search box: find messages of the room as you type, open one in context.
 *
 * Plain ES5, like chat.js (tests/test_search.py runs the ES5 check on this file too). Text
 * from the server reaches the page through textContent and createTextNode only; the
 * highlighted parts are <mark> elements made here, filled with text nodes.
 *
 * Wiring (nothing else: this file does not touch chat.js): a container in the page, and
 * "search" in templates/room.html's list of scripts (after strings.js, whose words it uses):
 *
 *   <div id="search" class="search" data-room="{{ room }}"></div>   (where the box goes)
 *
 * The container is filled on load; the room comes from its data-room, or else from
 * <main id="chat" data-room>. Its API, for chat.js or tests:
 *
 *   ChatSearch.attach(container, {room: "lobby", onOpen: function (id) {...}})
 *     -> {open: fn(), close: fn(), search: fn(q), isOpen: fn()}
 *   ChatSearch.instance  the one made on load (or null)
 *
 * Keyboard: "/" or Ctrl+K (Cmd+K) opens the box and focuses it; Escape closes it; Up and
 * Down move through the results, Enter opens one. Typing searches after DEBOUNCE_MS; an
 * answer to an older query than the last one typed is dropped.
 *
 * Opening a result: onOpen(id) when given returns true if it showed the message itself
 * (say, chat.js scrolling its log). Otherwise, if the message is already in the log on the
 * page (an element with data-id), it is scrolled into view and marked for a few seconds
 * (class "search-hit"); if not, the events around it (GET .../history?around=<id>) are
 * shown in a context panel under the results, the message scrolled to and marked there.
 *
 * Contract: API.md, part 2, "Search" (the server's docs/SEARCH.md says what matches what).
 */
(function () {
  "use strict";

  var doc = document;
  var win = window;
  // Every word through static/strings.js (translated there); a page without it shows keys.
  var t = win.chatapp && win.chatapp.t ? win.chatapp.t : function (key) { return key; };

  var DEBOUNCE_MS = 250;        // a pause in typing this long sends the query
  var PAGE = 20;                // results per page (the server's default)
  var CONTEXT = 30;             // events shown around an opened result
  var HIT_MS = 3000;            // how long an opened message stays marked in the log
  var TIMEOUT_MS = 10000;       // a search unanswered by then is reported as failed
  var MAX_QUERY = 200;          // the server refuses longer queries (400 bad_query)

  function make(tag, cls, text) {
    var el = doc.createElement(tag);
    if (cls) { el.className = cls; }
    if (text !== undefined && text !== null) { el.appendChild(doc.createTextNode(text)); }
    return el;
  }

  function clear(el) {
    while (el.firstChild) { el.removeChild(el.firstChild); }
  }

  function on(target, type, fn) {
    if (target.addEventListener) { target.addEventListener(type, fn, false); }
    else { target.attachEvent("on" + type, fn); }
  }

  function addClass(el, name) {
    if ((" " + el.className + " ").indexOf(" " + name + " ") < 0) {
      el.className = el.className ? el.className + " " + name : name;
    }
  }

  function removeClass(el, name) {
    el.className = (" " + el.className + " ").replace(" " + name + " ", " ")
      .replace(/^\s+|\s+$/g, "");
  }

  function pad2(n) { return n < 10 ? "0" + n : String(n); }

  function timeText(ts) {
    var d = new Date(ts * 1000);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
      pad2(d.getHours()) + ":" + pad2(d.getMinutes());
  }

  function getJSON(url, done) {
    var xhr = new XMLHttpRequest();
    var finished = false;
    var timer = setTimeout(function () { finish(0, null); xhr.abort(); }, TIMEOUT_MS);
    function finish(status, data) {
      if (finished) { return; }
      finished = true;
      clearTimeout(timer);
      done(status, data);
    }
    xhr.open("GET", url, true);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.onreadystatechange = function () {
      var data = null;
      if (xhr.readyState !== 4) { return; }
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
      finish(xhr.status, data);
    };
    xhr.send(null);
    return { abort: function () { finished = true; clearTimeout(timer); xhr.abort(); } };
  }

  function query(params) {
    var parts = [], k;
    for (k in params) {
      if (params.hasOwnProperty(k) && params[k] !== null && params[k] !== undefined) {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
      }
    }
    return parts.join("&");
  }

  /*
   * The text with the server's highlight ranges ([start, end) in UTF-16 code units, as
   * JavaScript strings count) as <mark> elements: text nodes only.
   */
  function highlighted(text, ranges) {
    var frag = doc.createDocumentFragment();
    var at = 0, i, a, b;
    for (i = 0; ranges && i < ranges.length; i++) {
      a = Math.max(ranges[i][0], at);
      b = Math.min(ranges[i][1], text.length);
      if (b <= a) { continue; }
      if (a > at) { frag.appendChild(doc.createTextNode(text.slice(at, a))); }
      frag.appendChild(make("mark", "search-mark", text.slice(a, b)));
      at = b;
    }
    if (at < text.length) { frag.appendChild(doc.createTextNode(text.slice(at))); }
    return frag;
  }

  function isTyping(target) {
    var tag = target && target.tagName ? target.tagName.toLowerCase() : "";
    return tag === "input" || tag === "textarea" || tag === "select" ||
      (target && target.isContentEditable);
  }

  function attach(container, options) {
    var room = options.room;
    var base = "/api/rooms/" + encodeURIComponent(room);
    var pending = null;        // the request in flight
    var timer = null;          // the debounce
    var generation = 0;        // bumps with every query typed; older answers are dropped
    var lastQ = "";
    var nextBefore = null;
    var selected = -1;
    var hitTimer = null;

    var toggle = make("button", "btn btn-quiet btn-small search-toggle", t("search.open"));
    var panel = make("div", "search-panel");
    var form = make("form", "search-form");
    var label = make("label", "visually-hidden", t("search.label", { room: room }));
    var input = make("input", "search-input");
    var close = make("button", "btn btn-quiet btn-small search-close", t("search.close"));
    var status = make("p", "search-status");
    var list = make("ol", "search-results");
    var more = make("button", "btn btn-quiet btn-small search-more", t("search.more"));
    var context = make("ol", "log search-context");

    toggle.type = "button";
    toggle.title = t("search.shortcut");
    toggle.setAttribute("aria-expanded", "false");
    input.type = "search";
    input.id = "search-input-" + room;
    input.maxLength = MAX_QUERY;
    input.autocomplete = "off";
    input.placeholder = t("search.placeholder", { room: room });
    label.htmlFor = input.id;
    close.type = "button";
    more.type = "button";
    status.setAttribute("role", "status");
    list.setAttribute("role", "listbox");
    list.setAttribute("aria-label", t("search.results"));
    form.appendChild(label);
    form.appendChild(input);
    form.appendChild(close);
    panel.appendChild(form);
    panel.appendChild(status);
    panel.appendChild(list);
    panel.appendChild(more);
    panel.appendChild(context);
    panel.setAttribute("hidden", "");
    more.setAttribute("hidden", "");
    context.setAttribute("hidden", "");
    container.appendChild(toggle);
    container.appendChild(panel);

    function isOpen() { return !panel.hasAttribute("hidden"); }

    function open() {
      panel.removeAttribute("hidden");
      toggle.setAttribute("aria-expanded", "true");
      input.focus();
      if (input.select) { input.select(); }
    }

    function shut() {
      panel.setAttribute("hidden", "");
      toggle.setAttribute("aria-expanded", "false");
      if (pending) { pending.abort(); pending = null; }
      if (timer) { clearTimeout(timer); timer = null; }
      toggle.focus();
    }

    function say(text) { clear(status); if (text) { status.appendChild(doc.createTextNode(text)); } }

    function resultItem(ev) {
      var li = make("li", "search-result");
      var meta = make("p", "meta");
      var text = make("div", "text");
      li.setAttribute("role", "option");
      li.setAttribute("data-id", ev.id);
      li.tabIndex = -1;
      meta.appendChild(make("span", "nick", ev.nick));
      meta.appendChild(doc.createTextNode(" "));
      meta.appendChild(make("time", null, timeText(ev.ts)));
      text.setAttribute("dir", "auto");
      text.appendChild(highlighted(ev.text || "", ev.highlight));
      li.appendChild(meta);
      li.appendChild(text);
      on(li, "click", function () { openResult(ev.id); });
      return li;
    }

    function run(q, before) {
      var mine = ++generation;
      if (pending) { pending.abort(); pending = null; }
      if (!before) { clear(list); selected = -1; }
      more.setAttribute("hidden", "");
      if (!q.replace(/\s+/g, "")) { say(""); return; }
      say(t("search.searching"));
      pending = getJSON(base + "/search?" + query({ q: q, limit: PAGE, before: before }),
        function (code, data) {
          var i;
          if (mine !== generation) { return; }   // a newer query was typed meanwhile
          pending = null;
          if (code !== 200 || !data) {
            say(data && data.message ? data.message : t("search.failed"));
            return;
          }
          for (i = 0; i < data.results.length; i++) { list.appendChild(resultItem(data.results[i])); }
          nextBefore = data.next_before;
          if (data.has_more) { more.removeAttribute("hidden"); }
          say(list.childNodes.length ? "" : t("search.none"));
        });
    }

    function search(q) {
      lastQ = q;
      if (timer) { clearTimeout(timer); }
      timer = setTimeout(function () { timer = null; run(lastQ, null); }, DEBOUNCE_MS);
    }

    function mark(el) {
      var previous = doc.querySelectorAll ? doc.querySelectorAll(".search-hit") : [];
      var i;
      for (i = 0; i < previous.length; i++) { removeClass(previous[i], "search-hit"); }
      addClass(el, "search-hit");
      if (el.scrollIntoView) { el.scrollIntoView({ block: "center" }); }
      if (hitTimer) { clearTimeout(hitTimer); }
      hitTimer = setTimeout(function () { removeClass(el, "search-hit"); }, HIT_MS);
    }

    function inLog(id) {
      var candidates = doc.querySelectorAll ? doc.querySelectorAll("[data-id]") : [];
      var i;
      for (i = 0; i < candidates.length; i++) {
        if (candidates[i].getAttribute("data-id") === id &&
            !panel.contains(candidates[i])) { return candidates[i]; }
      }
      return null;
    }

    function contextItem(ev) {
      var li = make("li", ev.type === "message" ? "ev msg" : "ev notice");
      var meta = make("p", "meta");
      li.setAttribute("data-id", ev.id);
      meta.appendChild(make("span", "nick", ev.nick));
      meta.appendChild(doc.createTextNode(" "));
      meta.appendChild(make("time", null, timeText(ev.ts)));
      li.appendChild(meta);
      if (ev.type === "message") {
        li.appendChild(make("div", "text", ev.deleted ? "(deleted)" : ev.text || ""));
      } else {
        li.appendChild(make("div", "text", ev.type === "join" ? "joined" : ev.type === "leave" ? "left" : ev.type));
      }
      return li;
    }

    function openResult(id) {
      var el;
      if (options.onOpen && options.onOpen(id) === true) { return; }
      el = inLog(id);
      if (el) { context.setAttribute("hidden", ""); mark(el); return; }
      say(t("search.context.loading"));
      getJSON(base + "/history?" + query({ around: id, limit: CONTEXT }), function (code, data) {
        var i, item, target = null;
        if (code !== 200 || !data) { say(t("search.context.failed")); return; }
        say("");
        clear(context);
        for (i = 0; i < data.events.length; i++) {
          item = contextItem(data.events[i]);
          if (data.events[i].id === id) { target = item; }
          context.appendChild(item);
        }
        context.removeAttribute("hidden");
        if (target) { mark(target); }
      });
    }

    function move(step) {
      var items = list.childNodes;
      if (!items.length) { return; }
      selected = Math.max(0, Math.min(items.length - 1, selected + step));
      items[selected].focus();
    }

    on(toggle, "click", function () { if (isOpen()) { shut(); } else { open(); } });
    on(close, "click", shut);
    on(more, "click", function () { run(lastQ, nextBefore); });
    on(form, "submit", function (e) {
      if (e.preventDefault) { e.preventDefault(); }
      if (timer) { clearTimeout(timer); timer = null; }
      lastQ = input.value;
      run(lastQ, null);
      return false;
    });
    on(input, "input", function () { search(input.value); });
    on(input, "keyup", function () { if (input.value !== lastQ) { search(input.value); } });  // old IE
    on(panel, "keydown", function (e) {
      var key = e.key || e.keyCode;
      var target = e.target || e.srcElement;
      if (key === "Escape" || key === "Esc" || key === 27) { shut(); return; }
      if (key === "ArrowDown" || key === "Down" || key === 40) { move(1); if (e.preventDefault) { e.preventDefault(); } }
      if (key === "ArrowUp" || key === "Up" || key === 38) { move(-1); if (e.preventDefault) { e.preventDefault(); } }
      if ((key === "Enter" || key === 13) && target && target.getAttribute &&
          target.getAttribute("role") === "option") {
        openResult(target.getAttribute("data-id"));
      }
    });
    on(doc, "keydown", function (e) {
      var key = e.key || e.keyCode;
      var target = e.target || e.srcElement;
      var ctrlK = (e.ctrlKey || e.metaKey) && (key === "k" || key === "K" || key === 75);
      if (ctrlK || ((key === "/" || key === 191) && !isTyping(target) && !e.ctrlKey)) {
        if (e.preventDefault) { e.preventDefault(); }
        open();
      }
    });

    return { open: open, close: shut, search: function (q) { input.value = q; open(); run(q, null); },
             isOpen: isOpen };
  }

  function stylesheet() {
    var scripts = doc.getElementsByTagName("script");
    var i, src, link;
    for (i = 0; i < scripts.length; i++) {
      src = scripts[i].getAttribute("src") || "";
      if (/search\.js(\?|$)/.test(src)) {
        link = doc.createElement("link");
        link.rel = "stylesheet";
        link.href = src.replace(/search\.js(\?.*)?$/, "search.css");
        doc.getElementsByTagName("head")[0].appendChild(link);
        return;
      }
    }
  }

  function init() {
    var container = doc.getElementById("search");
    var main = doc.getElementById("chat");
    var room = container && (container.getAttribute("data-room") ||
      (main && main.getAttribute("data-room")));
    if (!container || !room) { return; }
    stylesheet();
    win.ChatSearch.instance = attach(container, { room: room });
  }

  win.ChatSearch = { attach: attach, instance: null };
  if (doc.readyState === "loading") { on(doc, "DOMContentLoaded", init); } else { init(); }
}());
