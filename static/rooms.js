/*
 * chatapp browser client: the rooms sidebar. My rooms (GET /api/me/rooms) with their unread
 * and mention counts, refreshed now and then; a "find or create a room" box whose
 * suggestions come from the directory (GET /api/rooms, the rooms with people); choosing a
 * room switches to it without reloading the page (chat.js's hooks.go).
 *
 * It lives for the whole page, across room switches; the room in view is setCurrent().
 * Room names and counts come from the server and are put in the page as text only.
 *
 * chatapp.Rooms(hooks) -> {start, refresh, setCurrent(room)}
 * hooks: go(room), mine(rooms) (the list, each {room, read, last_id, unread, mentions}).
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var doc = document;

  var REFRESH_MS = 10000;          // my rooms' counts, while the page is visible
  var DIRECTORY_MS = 500;          // after typing in the box, ask the directory once
  var ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;   // the server's rule (rules.py)

  chatapp.Rooms = function (hooks) {
    var list = c.byId("rooms-list");
    var form = c.byId("room-find");
    var input = c.byId("room-find-name");
    var options = c.byId("room-directory");
    var current = "";
    var timer = null, dirTimer = null, asking = false;

    function item(entry) {
      var li = c.make("li", entry.room === current ? "room-item current" : "room-item");
      var a = c.make("a", "room-link", "#" + entry.room);
      var badge;
      a.href = "/r/" + encodeURIComponent(entry.room);
      a.setAttribute("data-room", entry.room);
      if (entry.room === current) { a.setAttribute("aria-current", "page"); }
      li.appendChild(a);
      if (entry.room !== current && entry.mentions) {
        badge = c.make("span", "count mention-count", t("rooms.mentions", { n: entry.mentions }));
        badge.setAttribute("aria-label", t("rooms.mentions.label", { n: entry.mentions }));
        li.appendChild(badge);
      }
      if (entry.room !== current && entry.unread) {
        badge = c.make("span", "count unread-count", entry.unread >= 1000 ? "999+" : String(entry.unread));
        badge.setAttribute("aria-label", t("rooms.unread.label", { n: entry.unread }));
        li.appendChild(badge);
      }
      return li;
    }

    function render(rooms) {
      var i, seen = false;
      c.empty(list);
      for (i = 0; i < rooms.length; i++) {
        if (!rooms[i] || typeof rooms[i].room !== "string") { continue; }
        if (rooms[i].room === current) { seen = true; }
        list.appendChild(item(rooms[i]));
      }
      if (current && !seen) { list.insertBefore(item({ room: current }), list.firstChild); }
    }

    function refresh() {
      if (asking) { return; }
      asking = true;
      c.request("GET", "/api/me/rooms", null, 10000, function (status, data) {
        asking = false;
        if (status === 200 && data && data.rooms) {
          render(data.rooms);
          hooks.mine(data.rooms);
        }
      });
    }

    function directory() {
      c.request("GET", "/api/rooms", null, 10000, function (status, data) {
        var i, opt, r;
        if (status !== 200 || !data || !data.rooms) { return; }
        c.empty(options);
        for (i = 0; i < data.rooms.length; i++) {
          r = data.rooms[i];
          if (!r || typeof r.room !== "string") { continue; }
          opt = c.make("option");
          opt.value = r.room;
          opt.label = t("rooms.people", { n: r.people });
          options.appendChild(opt);
        }
      });
    }

    function directorySoon() {
      if (dirTimer) { clearTimeout(dirTimer); }
      dirTimer = setTimeout(function () { dirTimer = null; directory(); }, DIRECTORY_MS);
    }

    return {
      start: function () {
        if (!list) { return; }
        c.on(list, "click", function (e) {
          var a = c.closest(e.target, "room-link", list);
          if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button) { return; }
          e.preventDefault();
          hooks.go(a.getAttribute("data-room"));
        });
        c.on(form, "submit", function (e) {
          var name = c.trim(input.value).replace(/^#/, "");
          e.preventDefault();
          if (!ROOM_RE.test(name)) {
            input.setCustomValidity(t("rooms.bad.name"));
            if (input.reportValidity) { input.reportValidity(); }
            return;
          }
          input.setCustomValidity("");
          input.value = "";
          hooks.go(name);
        });
        c.on(input, "input", function () { input.setCustomValidity(""); directorySoon(); });
        c.on(input, "focus", directory);
        // At phone width the sidebar starts folded, like the people list.
        if (window.matchMedia && window.matchMedia("(max-width: 40em)").matches) {
          c.byId("rooms").removeAttribute("open");
        }
        timer = setInterval(function () { if (doc.hidden !== true) { refresh(); } }, REFRESH_MS);
        refresh();
      },
      refresh: refresh,
      setCurrent: function (room) { current = room; }
    };
  };
}());
