/*
 * chatapp browser client: acting on a message. Reply, react (a picker of common emoji and
 * free entry; a click on a chip toggles your own), and on your own messages edit (in place:
 * Enter saves, Escape cancels) and delete (after a confirmation).
 *
 * Every control is a real <button> or form field, reachable with Tab, named for screen
 * readers (aria-label), and what happens is said through the live region (hooks.announce).
 * Nothing here changes a message on its own: each action goes through the outbox, and the
 * message changes when the server's event arrives (its ack or the stream), so every page
 * shows the same thing. The one exception is visual: an edit being saved shows its new text
 * dimmed until then, and the held text comes back if the server refuses it.
 *
 * chatapp.Actions(ctx, hooks) -> {start, editLast, failed, acted}
 * hooks: view() (LogView), older() (Older), outbox() (Outbox), composer() (Composer), announce(text), notice(text).
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;

  // The picker's quick choices: the reactions people use most in chat apps, 8 so that they
  // fit one row on a phone. Anything else goes through the free entry.
  var COMMON_EMOJI = ["\uD83D\uDC4D", "\u2764\uFE0F", "\uD83D\uDE02", "\uD83C\uDF89",
                      "\uD83D\uDE2E", "\uD83D\uDE22", "\uD83D\uDE4F", "\uD83D\uDC40"];

  function isEnter(e) {
    return (e.key === "Enter" || e.keyCode === 13) && !e.shiftKey && !e.altKey &&
      !e.isComposing && e.keyCode !== 229;
  }

  function isEscape(e) { return e.key === "Escape" || e.key === "Esc" || e.keyCode === 27; }

  chatapp.Actions = function (ctx, hooks) {
    var me = ctx.me;
    var panel = null;        // the open picker, editor or delete confirmation: {li, el, close}

    function messageOf(el) { return c.closest(el, "msg", ctx.scroller); }

    function buttonOf(li, action) {
      var buttons = li.getElementsByTagName("button"), i;
      for (i = 0; i < buttons.length; i++) {
        if (buttons[i].getAttribute("data-action") === action) { return buttons[i]; }
      }
      return null;
    }

    function closePanel(focusBack) {
      var open = panel;
      if (!open) { return; }
      panel = null;
      open.close();
      c.removeNode(open.el);
      if (focusBack && focusBack.focus) { focusBack.focus(); }
    }

    // Open a panel in the message, under its toolbar. Escape in it closes it, puts focus
    // back on opts.backTo and says opts.cancelled. opts.onClose runs however it closes.
    function openPanel(li, el, opts) {
      var bar = li.getElementsByTagName("div"), anchor = null, i;
      closePanel(null);
      for (i = 0; i < bar.length; i++) {
        if (c.hasClass(bar[i], "actions")) { anchor = bar[i]; }
      }
      c.addClass(el, "panel");   // events.fillMessage() leaves panels alone
      li.insertBefore(el, anchor ? anchor.nextSibling : null);
      panel = { li: li, el: el, close: opts.onClose || function () {} };
      c.on(el, "keydown", function (e) {
        if (isEscape(e)) {
          e.preventDefault();
          if (e.stopPropagation) { e.stopPropagation(); }
          closePanel(opts.backTo);
          if (opts.cancelled) { hooks.announce(opts.cancelled); }
        }
      });
    }

    /* ---- react */

    function react(li, emoji) {
      var msg = li.chatappMessage, who = msg.reactions[emoji] || [], mine = false, i;
      if (msg.deleted || !emoji) { return; }
      for (i = 0; i < who.length; i++) {
        if (who[i] === me) { mine = true; }
      }
      hooks.outbox().add({ kind: "react", target: msg.id, emoji: emoji, on: !mine });
      hooks.outbox().flush();
    }

    function openPicker(li, from) {
      var box = c.make("div", "picker"), row = c.make("div", "picker-row"), form, input, label, id, i;
      box.setAttribute("role", "group");
      box.setAttribute("aria-label", t("picker.label"));
      for (i = 0; i < COMMON_EMOJI.length; i++) {
        (function (emoji) {
          var b = c.button(emoji, "pick", function () {
            closePanel(from);
            react(li, emoji);
          });
          b.setAttribute("aria-label", t("picker.emoji.label", { emoji: emoji }));
          row.appendChild(b);
        }(COMMON_EMOJI[i]));
      }
      box.appendChild(row);
      form = c.make("form", "picker-other");
      id = "pick-" + li.getAttribute("data-id");
      label = c.make("label", "visually-hidden", t("picker.other"));
      label.setAttribute("for", id);
      input = c.make("input");
      input.type = "text";
      input.id = id;
      input.setAttribute("placeholder", t("picker.other"));
      input.setAttribute("autocomplete", "off");
      input.setAttribute("size", "8");
      form.appendChild(label);
      form.appendChild(input);
      form.appendChild(c.button(t("picker.add"), "btn btn-quiet btn-small", null));
      form.lastChild.type = "submit";
      form.appendChild(c.button(t("picker.close"), "link-button", function () { closePanel(from); }));
      c.on(form, "submit", function (e) {
        var emoji = c.trim(input.value);
        e.preventDefault();
        if (!emoji) { return; }
        if (c.countChars(emoji) > ctx.limits.max_emoji) {
          hooks.notice(t("picker.not.one"));
          return;
        }
        closePanel(from);
        react(li, emoji);
      });
      box.appendChild(form);
      openPanel(li, box, { backTo: from });
      row.firstChild.focus();
    }

    /* ---- edit */

    function startEdit(li, backTo) {
      var msg = li.chatappMessage, box, area, hint, error, saveBtn;
      if (!msg || msg.deleted || msg.nick !== me) { return; }
      backTo = backTo || buttonOf(li, "edit");
      box = c.make("div", "editor");
      area = c.make("textarea", "edit-text");
      area.value = msg.text || "";
      area.setAttribute("aria-label", t("edit.label"));
      area.setAttribute("dir", "auto");
      area.setAttribute("rows", String(Math.min(8, (area.value.match(/\n/g) || []).length + 1)));
      hint = c.make("p", "hint", t("edit.hint"));
      error = c.make("p", "form-error");
      error.setAttribute("role", "alert");
      c.show(error, false);
      saveBtn = c.button(t("edit.save"), "btn btn-primary btn-small", function () { save(); });
      box.appendChild(area);
      box.appendChild(hint);
      box.appendChild(error);
      box.appendChild(saveBtn);
      box.appendChild(c.button(t("edit.cancel"), "btn btn-quiet btn-small", function () {
        closePanel(backTo);
        hooks.announce(t("announce.edit.cancelled"));
      }));
      c.addClass(li, "editing");

      function save() {
        var text = c.trim(area.value), n = c.countChars(text), problem = null, textEl;
        if (text === msg.text) {
          closePanel(backTo);
          return;
        }
        if (!text) { problem = t("edit.empty"); }
        if (n > ctx.limits.max_text) { problem = chatapp.tn("composer.too.long", ctx.limits.max_text, { length: n }); }
        if (problem) {
          c.setText(error, problem);
          c.show(error, true);
          return;
        }
        closePanel(backTo);
        textEl = firstWithClass(li, "text");
        if (textEl && !msg.deleted) {
          c.setText(textEl, text);
          c.addClass(li, "saving");
        }
        hooks.outbox().add({ kind: "edit", target: msg.id, text: text });
        hooks.outbox().flush();
      }

      c.on(area, "keydown", function (e) {
        if (isEnter(e)) {
          e.preventDefault();
          save();
        }
      });
      openPanel(li, box, {
        backTo: backTo,
        cancelled: t("announce.edit.cancelled"),
        onClose: function () { c.removeClass(li, "editing"); }
      });
      area.focus();
      area.setSelectionRange(area.value.length, area.value.length);
      hooks.announce(t("announce.editing"));
    }

    function firstWithClass(li, cls) {
      var nodes = li.getElementsByTagName("*"), i;
      for (i = 0; i < nodes.length; i++) {
        if (c.hasClass(nodes[i], cls)) { return nodes[i]; }
      }
      return null;
    }

    // Up arrow in an empty composer: edit the last message of ours the page holds.
    function editLast() {
      var lines = hooks.view().heldMessages(), i, msg;
      for (i = lines.length - 1; i >= 0; i--) {
        msg = lines[i].chatappMessage;
        if (msg.nick === me && !msg.deleted) {
          if (lines[i].scrollIntoView) { lines[i].scrollIntoView({ block: "nearest" }); }
          startEdit(lines[i], ctx.input);
          return true;
        }
      }
      return false;
    }

    /* ---- delete */

    function confirmDelete(li, from) {
      var msg = li.chatappMessage, box, no;
      if (!msg || msg.deleted) { return; }
      if (msg.nick !== me && !c.hasClass(document.body, "may-moderate")) { return; }
      box = c.make("div", "confirm");
      box.setAttribute("role", "group");
      box.setAttribute("aria-label", t("delete.confirm"));
      box.appendChild(c.make("p", "confirm-text", t("delete.confirm")));
      box.appendChild(c.button(t("delete.yes"), "btn btn-danger btn-small", function () {
        closePanel(null);
        li.setAttribute("tabindex", "-1");
        li.focus();
        hooks.outbox().add({ kind: "delete", target: msg.id });
        hooks.outbox().flush();
      }));
      no = c.button(t("delete.no"), "btn btn-quiet btn-small", function () {
        closePanel(from);
        hooks.announce(t("announce.delete.cancelled"));
      });
      box.appendChild(no);
      openPanel(li, box, { backTo: from, cancelled: t("announce.delete.cancelled") });
      no.focus();
    }

    /* ---- answers */

    // An action the server refused: the message shows its held state again; say why.
    function failed(item, message) {
      var li = hooks.view().held(item.target);
      if (li) {
        c.removeClass(li, "saving");
        hooks.view().refresh(li);
      }
      hooks.notice(t("notice.action.failed", { message: message }));
      hooks.announce(t("notice.action.failed", { message: message }));
    }

    function onClick(e) {
      var target = e.target, b = null, li, action;
      while (target && target !== ctx.scroller) {
        if (target.nodeType === 1 && target.hasAttribute("data-action")) {
          b = target;
          break;
        }
        target = target.parentNode;
      }
      if (!b || !(li = messageOf(b)) || !li.chatappMessage) { return; }
      action = b.getAttribute("data-action");
      if (action === "reply") {
        closePanel(null);
        hooks.composer().replyTo(li.chatappMessage);
      } else if (action === "react") {
        if (panel && panel.li === li && c.hasClass(panel.el, "picker")) { closePanel(b); } else { openPicker(li, b); }
      } else if (action === "edit") {
        startEdit(li, b);
      } else if (action === "delete") {
        confirmDelete(li, b);
      } else if (action === "toggle") {
        react(li, b.getAttribute("data-emoji"));
      } else if (action === "goto") {
        hooks.older().goTo(b.getAttribute("data-target"));
      }
    }

    return {
      start: function () { c.on(ctx.scroller, "click", onClick); },
      editLast: editLast,
      failed: failed
    };
  };
}());
