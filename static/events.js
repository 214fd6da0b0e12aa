/*
 * chatapp browser client: the event kinds, and the one renderer of an event.
 *
 * KINDS below is the only place that knows the event types of the contract (API.md, "More
 * kinds of events, one log"). Each kind either draws a line in the log (render) or changes a
 * message the page holds (apply); kindOf() has an explicit case for a type this page does not
 * know, drawn as a neutral notice (never mistaken for a join or a leave).
 *
 * The server no longer draws events: the room page embeds them as JSON and this file draws
 * them, as it draws those that arrive later, so there is one renderer and one nick colour.
 * (The page's <noscript> snapshot is a plain, readable list for people without JavaScript.)
 *
 * A message's current state (what apply() changes, what renderMessage() draws):
 *   {id, room, type: "message", nick, ts, text, edited, deleted, reactions: {emoji: [nick]},
 *    mentions, reply_to, reply_preview: {nick, text} | {nick, deleted: true}}
 * The trap: every string in it came from another person; it is put in the page only as text.
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var doc = document;

  /* ------------------------------------------------------------------ state changes */

  function copyMessage(ev) {
    var msg = {}, k, reactions = {};
    for (k in ev) {
      if (ev.hasOwnProperty(k)) { msg[k] = ev[k]; }
    }
    if (ev.reactions && typeof ev.reactions === "object") {
      for (k in ev.reactions) {
        if (ev.reactions.hasOwnProperty(k) && ev.reactions[k] && ev.reactions[k].length) {
          reactions[k] = ev.reactions[k].slice(0);
        }
      }
    }
    msg.reactions = reactions;
    return msg;
  }

  function applyEdit(msg, ev) {
    if (msg.deleted || typeof ev.text !== "string") { return false; }
    msg.text = ev.text;
    msg.edited = ev.ts;
    // The server finds the mentions of the new text (API.md): they replace the old ones.
    if (ev.mentions && ev.mentions.length) { msg.mentions = ev.mentions; } else { delete msg.mentions; }
    return true;
  }

  function applyDelete(msg) {
    if (msg.deleted) { return false; }
    msg.deleted = true;
    delete msg.text;
    delete msg.edited;
    delete msg.mentions;
    delete msg.reply_preview;
    msg.reactions = {};
    return true;
  }

  // Set semantics per person and emoji: "on" adds the nick once, "off" removes it; an emoji
  // nobody uses any more disappears. New emoji go last: the order people reacted in.
  function applyReaction(msg, ev) {
    var who, i, found = -1;
    if (msg.deleted || typeof ev.emoji !== "string" || !ev.emoji) { return false; }
    who = msg.reactions[ev.emoji] || [];
    for (i = 0; i < who.length; i++) {
      if (who[i] === ev.nick) { found = i; }
    }
    if (ev.on !== false && found < 0) {
      who.push(ev.nick);
      msg.reactions[ev.emoji] = who;
      return true;
    }
    if (ev.on === false && found >= 0) {
      who.splice(found, 1);
      if (who.length) { msg.reactions[ev.emoji] = who; } else { delete msg.reactions[ev.emoji]; }
      return true;
    }
    return false;
  }

  /* ------------------------------------------------------------------ drawing */

  function baseLine(ev, cls) {
    var li = c.make("li", "ev " + cls);
    li.setAttribute("data-id", ev.id);
    li.setAttribute("data-nick", ev.nick);
    li.setAttribute("data-ts", String(ev.ts));
    return li;
  }

  function noticeLine(ev, cls, words) {
    var li = baseLine(ev, "notice " + cls);
    li.appendChild(c.nickElement(String(ev.nick)));
    li.appendChild(doc.createTextNode(" " + words + " "));
    li.appendChild(c.timeElement(ev.ts));
    return li;
  }

  function renderJoin(ev) { return noticeLine(ev, "is-join", t("event.joined")); }

  function renderLeave(ev) { return noticeLine(ev, "is-leave", t("event.left")); }

  function renderModeration(ev) {
    var params = { action: String(ev.action || ""), subject: String(ev.subject || "") };
    var key = "event.moderation." + params.action;
    var words = chatapp.STRINGS.hasOwnProperty(key) ? t(key, params) : t("event.moderation", params);
    var secs = typeof ev.seconds === "number" ? ev.seconds : 0;
    if (params.action === "slow_mode") {
      words = secs > 0 ? t("event.moderation.slow.on", { n: secs }) : t("event.moderation.slow.off");
    } else if (secs > 0 && (params.action === "mute" || params.action === "ban")) {
      words += secs % 60 === 0 ? t("event.moderation.minutes", { n: secs / 60 }) :
        t("event.moderation.seconds", { n: secs });
    }
    if (typeof ev.reason === "string" && ev.reason) {
      words += t("event.moderation.reason", { reason: ev.reason });
    }
    return noticeLine(ev, "is-moderation", words);
  }

  function renderUnknown(ev) {
    return noticeLine(ev, "is-unknown", t("event.unknown", { type: String(ev.type) }));
  }

  function actionButton(action, label, aria) {
    var b = c.button(label, "act act-" + action);
    b.setAttribute("data-action", action);
    b.setAttribute("aria-label", aria);
    return b;
  }

  // The toolbar every stored message carries; actions.js handles its clicks (one listener).
  function toolbar(msg, me) {
    var bar = c.make("div", "actions"), other;
    bar.setAttribute("role", "toolbar");
    bar.setAttribute("aria-label", t("action.toolbar", { nick: msg.nick }));
    bar.appendChild(actionButton("reply", t("action.reply"), t("action.reply.label", { nick: msg.nick })));
    bar.appendChild(actionButton("react", t("action.react"), t("action.react.label", { nick: msg.nick })));
    if (msg.nick === me) {
      bar.appendChild(actionButton("edit", t("action.edit"), t("action.edit.label")));
      bar.appendChild(actionButton("delete", t("action.delete"), t("action.delete.label")));
    } else {
      // Shown only on a moderator's page (moderation.js sets body.may-moderate; chat.css
      // hides it elsewhere): the server carries it out as the moderation delete.
      other = actionButton("delete", t("action.delete"),
        t("action.delete.moderator.label", { nick: msg.nick }));
      c.addClass(other, "act-moderator");
      bar.appendChild(other);
    }
    return bar;
  }

  // The quoted original above a reply; a click (or Enter) scrolls to it.
  function replyRef(targetId, preview) {
    var b = c.button(null, "reply-ref");
    var words = preview && preview.deleted ? t("reply.deleted")
      : (preview && typeof preview.text === "string" ? preview.text : t("reply.missing"));
    b.setAttribute("data-action", "goto");
    b.setAttribute("data-target", targetId);
    b.appendChild(c.make("span", "visually-hidden", t("reply.to", { nick: preview ? preview.nick : "" }) + " "));
    if (preview && preview.nick) {
      b.appendChild(c.nickElement(String(preview.nick)));
      b.appendChild(doc.createTextNode(" "));
    }
    b.appendChild(c.make("span", preview && preview.deleted ? "reply-text tombstone" : "reply-text", words));
    return b;
  }

  function reactionChips(msg, me) {
    var list = c.make("ul", "reactions"), emoji, who, li, chip, mine, i;
    list.setAttribute("aria-label", t("reactions.label"));
    for (emoji in msg.reactions) {
      if (!msg.reactions.hasOwnProperty(emoji)) { continue; }
      who = msg.reactions[emoji];
      mine = false;
      for (i = 0; i < who.length; i++) {
        if (who[i] === me) { mine = true; }
      }
      li = c.make("li");
      chip = c.button(null, mine ? "chip mine" : "chip");
      chip.setAttribute("data-action", "toggle");
      chip.setAttribute("data-emoji", emoji);
      chip.setAttribute("aria-pressed", mine ? "true" : "false");
      chip.setAttribute("title", who.join(", "));
      chip.setAttribute("aria-label", t(mine ? "reaction.chip.mine" : "reaction.chip",
        { emoji: emoji, count: who.length, who: who.join(", ") }));
      chip.appendChild(c.make("span", "chip-emoji", emoji));
      chip.appendChild(c.make("span", "chip-count", String(who.length)));
      li.appendChild(chip);
      list.appendChild(li);
    }
    c.show(list, list.firstChild !== null);
    return list;
  }

  // (Re)draw what changes in a message: reply quote, text or tombstone, "(edited)",
  // reactions. The meta line, the toolbar and an open panel (actions.js: picker, editor,
  // confirmation) stay, so focus on them survives an update.
  function fillMessage(li, msg, me) {
    var node, next, body, foot, edited, focusedEmoji = null, active = doc.activeElement;
    if (active && c.hasClass(active, "chip") && li.contains(active)) {
      focusedEmoji = active.getAttribute("data-emoji");
    }
    for (node = li.firstChild; node; node = next) {
      next = node.nextSibling;
      if (node.nodeType === 1 && !c.hasClass(node, "meta") && !c.hasClass(node, "actions") &&
          !c.hasClass(node, "panel")) {
        li.removeChild(node);
      }
    }
    node = li.getElementsByTagName("p")[0];   // the meta line: everything goes after it
    next = node ? node.nextSibling : li.firstChild;
    c.toggleClass(li, "deleted", !!msg.deleted);
    c.toggleClass(li, "mentions-me", mentions(msg, me));
    if (msg.reply_to && !msg.deleted) {
      li.insertBefore(replyRef(msg.reply_to, msg.reply_preview), next);
    }
    if (msg.deleted) {
      li.insertBefore(c.make("p", "tombstone", t("message.deleted")), next);
      return;
    }
    body = c.make("div", "text", typeof msg.text === "string" ? msg.text : "");
    body.setAttribute("dir", "auto");
    li.insertBefore(body, next);
    if (msg.edited) {
      foot = c.make("p", "msg-foot");
      edited = c.make("span", "edited", t("message.edited"));
      edited.setAttribute("title", t("message.edited.at", { time: c.formatTime(c.toDate(msg.edited)) }));
      edited.setAttribute("tabindex", "0");
      edited.setAttribute("aria-label", t("message.edited.at", { time: c.formatTime(c.toDate(msg.edited)) }));
      foot.appendChild(edited);
      li.insertBefore(foot, next);
    }
    li.insertBefore(reactionChips(msg, me), next);
    if (focusedEmoji !== null) {
      node = findChip(li, focusedEmoji);
      if (node) { node.focus(); }
    }
  }

  // Does the message name me (@nick)? Nicknames compare case-insensitively (a close
  // approximation of the server's NFKC casefold, enough for a highlight).
  function mentions(msg, me) {
    var i, list = msg.mentions || [];
    for (i = 0; i < list.length; i++) {
      if (String(list[i]).toLowerCase() === me.toLowerCase()) { return true; }
    }
    return false;
  }

  function findChip(li, emoji) {
    var chips = li.getElementsByTagName("button"), i;
    for (i = 0; i < chips.length; i++) {
      if (c.hasClass(chips[i], "chip") && chips[i].getAttribute("data-emoji") === emoji) { return chips[i]; }
    }
    return null;
  }

  // A message line keeps its current state with it (li.chatappMessage): what apply()
  // changes and fillMessage() draws again.
  function renderHeld(ev, me) {
    var msg = copyMessage(ev);
    var li = renderMessage(msg, me);
    li.chatappMessage = msg;
    return li;
  }

  function renderMessage(msg, me) {
    var li = baseLine(msg, msg.nick === me ? "msg own" : "msg");
    var meta = c.make("p", "meta");
    meta.appendChild(c.nickElement(String(msg.nick)));
    meta.appendChild(doc.createTextNode(" "));
    meta.appendChild(c.timeElement(msg.ts));
    li.appendChild(meta);
    li.appendChild(toolbar(msg, me));
    fillMessage(li, msg, me);
    return li;
  }

  // A message of ours not yet stored: dimmed, with its sending state and a place for why
  // it failed. item: the outbox's {cid, text, reply_to, reply_preview}.
  function renderPending(item, me) {
    var li = c.make("li", "ev msg own pending");
    var meta = c.make("p", "meta");
    var body = c.make("div", "text", item.text);
    var fail = c.make("p", "fail");
    var ts = c.now() / 1000;
    li.setAttribute("data-cid", item.cid);
    li.setAttribute("data-nick", me);
    li.setAttribute("data-ts", String(ts));
    meta.appendChild(c.nickElement(me));
    meta.appendChild(doc.createTextNode(" "));
    meta.appendChild(c.timeElement(ts));
    meta.appendChild(doc.createTextNode(" "));
    meta.appendChild(c.make("span", "send-state", t("send.sending")));
    li.appendChild(meta);
    if (item.reply_to) { li.appendChild(replyRef(item.reply_to, item.reply_preview)); }
    body.setAttribute("dir", "auto");
    c.show(fail, false);
    li.appendChild(body);
    li.appendChild(fail);
    return li;
  }

  /* ------------------------------------------------------------------ the kinds */

  // render(ev, me) -> <li>: a line of its own. apply(msg, ev) -> changed?: an action on the
  // message ev.target. One entry per type of the contract; kindOf() covers the rest.
  var KINDS = {
    message: { render: renderHeld, holds: true },
    join: { render: renderJoin },
    leave: { render: renderLeave },
    moderation: { render: renderModeration },
    edit: { apply: applyEdit, announce: "announce.edited" },
    "delete": { apply: applyDelete, announce: "announce.deleted" },
    reaction: { apply: applyReaction, announce: "announce.reacted" }
  };
  var UNKNOWN = { render: renderUnknown };

  function kindOf(ev) {
    return ev && KINDS.hasOwnProperty(ev.type) ? KINDS[ev.type] : UNKNOWN;
  }

  chatapp.events = {
    kindOf: kindOf,
    copyMessage: copyMessage,
    renderMessage: renderMessage,
    fillMessage: fillMessage,
    renderPending: renderPending,
    findChip: findChip,
    mentionsMe: mentions
  };
}());
