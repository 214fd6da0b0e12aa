/*
 * chatapp browser client: moderation. The menu on a nickname (in the people list and on
 * messages) with the actions the viewer may take, the notices when I am muted, kicked or
 * banned, and the room settings panel (moderators, slow mode) for the room's owner.
 *
 * chatapp.Moderation(ctx, hooks) -> {refused(frame) -> handled?, failed(message)}
 * hooks: notice(text), stop() (no more reconnecting: I was put out of the room).
 *
 * What the viewer may do comes from GET /api/rooms/<room>/roles ("you": owner, moderator,
 * admin or null); the server decides anyway (403 not_moderator). The trap: every nickname
 * and reason came from another person: put in the page only as text (c.make, textContent).
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var doc = document;

  var TIMEOUT = 10000;
  // The menu's actions: what each posts (seconds absent: for good, or not timed).
  var ACTIONS = [
    { key: "mod.mute10", action: "mute", seconds: 600 },
    { key: "mod.mute", action: "mute" },
    { key: "mod.unmute", action: "unmute" },
    { key: "mod.kick", action: "kick" },
    { key: "mod.ban1d", action: "ban", seconds: 86400 },
    { key: "mod.ban", action: "ban" },
    { key: "mod.unban", action: "unban" }
  ];
  var SLOW_CHOICES = [0, 10, 30, 60, 300];

  chatapp.Moderation = function (ctx, hooks) {
    var role = null;
    var roles = null;
    var menu = null;
    var banner = null;

    function post(body, done) {
      c.request("POST", ctx.api + "/moderation", body, TIMEOUT, function (status, data) {
        if (status !== 200) {
          hooks.notice(t("mod.failed", { message: (data && data.message) || String(status) }));
        }
        if (done) { done(status === 200); }
      });
    }

    /* ---- the menu on a nickname */

    function closeMenu() {
      if (menu) { c.removeNode(menu); menu = null; }
    }

    function openMenu(nickEl) {
      var nick = c.trim(nickEl.textContent || "");
      var reason, i;
      closeMenu();
      if (!role || !nick || nick === ctx.me) { return; }
      menu = c.make("div", "mod-menu");
      menu.setAttribute("role", "menu");
      menu.setAttribute("aria-label", t("mod.menu.label", { nick: nick }));
      menu.appendChild(c.make("p", "mod-menu-title", t("mod.menu.label", { nick: nick })));
      reason = c.make("input", "mod-reason");
      reason.setAttribute("maxlength", "200");
      reason.setAttribute("placeholder", t("mod.reason"));
      reason.setAttribute("aria-label", t("mod.reason"));
      menu.appendChild(reason);
      for (i = 0; i < ACTIONS.length; i++) {
        menu.appendChild(actionButton(ACTIONS[i], nick, reason));
      }
      menu.appendChild(c.button(t("mod.close"), "btn btn-quiet btn-small", closeMenu));
      nickEl.parentNode.insertBefore(menu, nickEl.nextSibling);
      reason.focus();
    }

    function actionButton(spec, nick, reason) {
      var btn = c.button(t(spec.key), "btn btn-quiet btn-small mod-" + spec.action, function () {
        var body = { action: spec.action, subject: nick, reason: c.trim(reason.value) };
        if (spec.seconds) { body.seconds = spec.seconds; }
        post(body, function (ok) { if (ok) { closeMenu(); } });
      });
      btn.setAttribute("role", "menuitem");
      btn.setAttribute("data-action", spec.action);
      return btn;
    }

    function onClick(e) {
      var target = e.target || e.srcElement;
      if (!role || !target || !c.hasClass(target, "nick")) { return; }
      if (!c.closest(target, "log", null) && !c.closest(target, "log-older", null) &&
          !c.closest(target, "people-list", null)) { return; }
      openMenu(target);
    }

    /* ---- the owner's settings panel */

    function settingsPanel() {
      var panel = c.byId("room-settings");
      var people = c.byId("people");
      if (!panel && people && people.parentNode) {
        panel = c.make("details", "people room-settings");
        panel.id = "room-settings";
        people.parentNode.insertBefore(panel, people.nextSibling);
      }
      return panel;
    }

    function drawSettings() {
      var panel, list, i, form, input, select, opt, slow;
      if (role !== "owner" && role !== "admin") { return; }
      panel = settingsPanel();
      if (!panel) { return; }
      c.empty(panel);
      panel.appendChild(c.make("summary", "people-title", t("mod.settings")));
      panel.appendChild(c.make("p", "hint", t("mod.moderators")));
      list = c.make("ul", "people-list mod-list");
      if (!roles.moderators.length) { list.appendChild(c.make("li", "hint", t("mod.none"))); }
      for (i = 0; i < roles.moderators.length; i++) {
        list.appendChild(moderatorLine(roles.moderators[i]));
      }
      panel.appendChild(list);
      form = c.make("form", "account-form mod-add");
      input = c.make("input", "mod-add-nick");
      input.setAttribute("aria-label", t("mod.add.nick"));
      input.setAttribute("placeholder", t("mod.add.nick"));
      form.appendChild(input);
      form.appendChild(c.make("button", "btn btn-quiet btn-small", t("mod.add")));
      c.on(form, "submit", function (e) {
        if (e.preventDefault) { e.preventDefault(); }
        setModerator(c.trim(input.value), "PUT");
        return false;
      });
      panel.appendChild(form);
      slow = c.make("form", "account-form mod-slow");
      slow.appendChild(c.make("span", "hint", t("mod.slow")));
      select = c.make("select", "mod-slow-seconds");
      select.setAttribute("aria-label", t("mod.slow"));
      for (i = 0; i < SLOW_CHOICES.length; i++) {
        opt = c.make("option", "", SLOW_CHOICES[i] ? t("mod.slow.n", { n: SLOW_CHOICES[i] }) : t("mod.slow.off"));
        opt.value = String(SLOW_CHOICES[i]);
        select.appendChild(opt);
      }
      slow.appendChild(select);
      slow.appendChild(c.make("button", "btn btn-quiet btn-small", t("mod.slow.set")));
      c.on(slow, "submit", function (e) {
        if (e.preventDefault) { e.preventDefault(); }
        post({ action: "slow_mode", seconds: parseInt(select.value, 10) || 0 });
        return false;
      });
      panel.appendChild(slow);
    }

    function moderatorLine(nick) {
      var li = c.make("li", "person");
      li.appendChild(c.nickElement(String(nick)));
      li.appendChild(c.button(t("mod.remove"), "link-button", function () {
        setModerator(String(nick), "DELETE");
      }));
      return li;
    }

    function setModerator(nick, method) {
      if (!nick) { return; }
      c.request(method, ctx.api + "/moderators/" + encodeURIComponent(nick), null, TIMEOUT,
        function (status, data) {
          if (status === 200 && data) {
            roles = data;
            drawSettings();
          } else {
            hooks.notice(t("mod.failed", { message: (data && data.message) || String(status) }));
          }
        });
    }

    function loadRoles() {
      c.request("GET", ctx.api + "/roles", null, TIMEOUT, function (status, data) {
        if (status !== 200 || !data) { return; }
        roles = data;
        role = data.you || null;
        c.toggleClass(doc.body, "may-moderate", !!role);
        drawSettings();
      });
    }

    /* ---- when I am the one moderated */

    function showBanner(text, rejoin) {
      if (!banner) {
        banner = c.make("div", "notice-bar mod-banner");
        banner.id = "moderated";
        banner.setAttribute("role", "alert");
        ctx.scroller.parentNode.insertBefore(banner, ctx.scroller);
      }
      c.empty(banner);
      banner.appendChild(c.make("p", "", text));
      if (rejoin) {
        banner.appendChild(c.button(t("mod.rejoin"), "btn btn-quiet btn-small", function () {
          window.location.reload();
        }));
      }
      c.show(banner, true);
    }

    // An error frame or answer without a client_id: true if it was about me being put out.
    function refused(frame) {
      if (frame.error === "kicked") {
        hooks.stop();
        showBanner(t("mod.kicked"), true);
        return true;
      }
      if (frame.error === "banned") {
        hooks.stop();
        showBanner(t("mod.banned", { message: frame.message || "" }), false);
        ctx.input.disabled = true;
        ctx.sendBtn.disabled = true;
        return true;
      }
      return false;
    }

    // A send or action of mine failed with this message: muted, say so at the top too.
    function failed(code, message) {
      if (code === "muted") { hooks.notice(t("mod.muted", { message: message || "" })); }
    }

    c.on(doc, "click", onClick);
    c.on(doc, "keydown", function (e) { if (e.keyCode === 27) { closeMenu(); } });
    loadRoles();

    return { refused: refused, failed: failed, reload: loadRoles };
  };
}());
