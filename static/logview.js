/*
 * chatapp browser client: the conversation on screen. Where each event goes (id order,
 * messages still being sent last), grouping of one person's consecutive messages,
 * scrolling, older history, and applying edits, deletions and reactions to the messages
 * the page holds.
 *
 * The cursor is here (lastId): the id of the last event taken from the stream. Events are
 * drawn by chatapp.events (the only renderer); an action (edit, delete, reaction) for a
 * message the page does not hold is ignored, as the contract says. An action can arrive
 * twice (its ack, then the stream): each is applied once (applied[id]); the ones of
 * different people commute, so the order of the two copies does not matter.
 *
 * chatapp.LogView(ctx, hooks) -> {receive, sent, stray, failed, label, addPending,
 *   removePending, held, heldMessages, refresh, regroupAll, start, lastId, atBottom,
 *   scrollToBottom}. Older history is older.js.
 * hooks: outbox() (the Outbox), announce(text), arrived(ev) (a new line from someone),
 *   editFailedSend(item), sessionGone(), focusComposer().
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;
  var E = chatapp.events;

  var GROUP_GAP = 300;             // s: consecutive messages of one person are grouped
  var GROUP_SKEW = -60;            // s: clocks may disagree a little (an older ts still groups)

  chatapp.LogView = function (ctx, hooks) {
    var me = ctx.me;
    var scroller = ctx.scroller;
    var olderList = ctx.olderList;
    var log = ctx.log;
    var jumpBtn = ctx.jumpBtn;
    var lastId = ctx.cursor || "";
    var shown = {};          // id -> true: placed by its ack before the stream reached it
    var applied = {};        // action id -> true: already applied to its message

    function isEvent(el) { return !!el && el.nodeType === 1 && el.hasAttribute("data-id"); }

    function isPending(el) { return !!el && el.nodeType === 1 && c.hasClass(el, "pending"); }

    // The line of the message with this id, if the page holds it.
    function held(id) {
      var lists = [log, olderList], i, node;
      if (typeof id !== "string" || !id) { return null; }
      for (i = 0; i < lists.length; i++) {
        for (node = c.lastElement(lists[i]); node; node = c.previousElement(node)) {
          if (node.getAttribute("data-id") === id) { return node.chatappMessage ? node : null; }
        }
      }
      return null;
    }

    // Every message line, oldest first.
    function heldMessages() {
      var out = [], lists = [olderList, log], i, node;
      for (i = 0; i < lists.length; i++) {
        for (node = c.firstElement(lists[i]); node; node = c.nextElement(node)) {
          if (node.chatappMessage) { out.push(node); }
        }
      }
      return out;
    }

    // Where an event with this id goes in the live log: events in id order, then the
    // messages still being sent. Returns the element to insert before (null: at the end).
    function insertionPoint(id, skip) {
      var ref = null;
      var node = c.lastElement(log);
      while (node) {
        if (node !== skip) {
          if (isPending(node) || (isEvent(node) && node.getAttribute("data-id") > id)) {
            ref = node;
          } else {
            break;
          }
        }
        node = c.previousElement(node);
      }
      return ref;
    }

    function insertEvent(li) {
      log.insertBefore(li, insertionPoint(li.getAttribute("data-id"), null));
      regroup(li);
      regroup(c.nextElement(li));
    }

    // Consecutive messages of one person within GROUP_GAP are drawn as one block (the
    // repeated name stays in the page for screen readers, it is only hidden visually).
    function regroup(li) {
      var prev, dt, cont = false;
      if (!li || !c.hasClass(li, "msg")) { return; }
      prev = c.previousElement(li);
      if (!prev && li.parentNode === log) { prev = c.lastElement(olderList); }
      if (prev && c.hasClass(prev, "msg") && !c.hasClass(prev, "failed") && !c.hasClass(li, "failed") &&
          prev.getAttribute("data-nick") === li.getAttribute("data-nick")) {
        dt = parseFloat(li.getAttribute("data-ts")) - parseFloat(prev.getAttribute("data-ts"));
        cont = dt > GROUP_SKEW && dt < GROUP_GAP;
      }
      c.toggleClass(li, "cont", cont);
    }

    function regroupAll() {
      var lists = [olderList, log], i, node;
      for (i = 0; i < lists.length; i++) {
        for (node = c.firstElement(lists[i]); node; node = c.nextElement(node)) { regroup(node); }
      }
    }

    function removeLine(li) {
      var next;
      if (!li || !li.parentNode) { return; }
      next = c.nextElement(li);
      li.parentNode.removeChild(li);
      regroup(next);
    }

    /* ---- scrolling */

    function atBottom() {
      return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
    }

    function scrollToBottom() {
      scroller.scrollTop = scroller.scrollHeight;
      c.show(jumpBtn, false);
    }

    /* ---- events from either transport, in order */

    function receive(events) {
      var stick = atBottom();
      var added = 0, i, ev;
      for (i = 0; i < events.length; i++) {
        ev = events[i];
        if (ev && typeof ev.id === "string" && ev.id > lastId) {
          lastId = ev.id;
          if (accept(ev)) { added++; }
        }
      }
      if (!added) { return; }
      if (stick) {
        scrollToBottom();
      } else {
        c.show(jumpBtn, true);
      }
    }

    // One new event from the stream; true if it added a line.
    function accept(ev) {
      var kind = E.kindOf(ev), item;
      if (kind.apply) {
        applyAction(ev, kind);
        return false;
      }
      if (shown[ev.id]) {
        delete shown[ev.id];
        return false;
      }
      if (ev.type === "message" && ev.nick === me) {
        item = hooks.outbox().matchStream(ev);
        if (item) {
          hooks.outbox().forget(item);
          confirm(item, ev);
          hooks.outbox().flush();
          return true;
        }
      }
      insertEvent(kind.render(ev, me));
      hooks.arrived(ev);
      return true;
    }

    // An edit, delete or reaction: change the message it targets, if the page holds it.
    function applyAction(ev, kind) {
      var li = held(ev.target), msg, replies, i, words;
      if (!li || applied[ev.id]) { return; }
      applied[ev.id] = true;
      msg = li.chatappMessage;
      if (ev.type === "edit" && ev.nick === me) { c.removeClass(li, "saving"); }
      if (!kind.apply(msg, ev)) { return; }
      E.fillMessage(li, msg, me);
      if (ev.type === "delete") {
        // "A deleted text appears nowhere": not in the replies quoting it either.
        replies = heldMessages();
        for (i = 0; i < replies.length; i++) {
          if (replies[i].chatappMessage.reply_to === ev.target && !replies[i].chatappMessage.deleted) {
            replies[i].chatappMessage.reply_preview = { nick: msg.nick, deleted: true };
            E.fillMessage(replies[i], replies[i].chatappMessage, me);
          }
        }
      }
      if (ev.nick !== me) {
        words = ev.type === "reaction" && ev.on === false ? "announce.unreacted" : kind.announce;
        hooks.announce(t(words, { nick: ev.nick, emoji: ev.emoji || "", text: ev.text || "" }));
      }
    }

    /* ---- our own messages */

    function addPending(item) {
      item.li = E.renderPending(item, me);
      log.appendChild(item.li);
      regroup(item.li);
    }

    function removePending(item) {
      removeLine(item.li);
    }

    function label(item, text) {
      var states;
      if (!item.li) { return; }
      states = item.li.getElementsByTagName("span");
      for (var i = 0; i < states.length; i++) {
        if (c.hasClass(states[i], "send-state")) { c.setText(states[i], text); }
      }
    }

    // The dimmed "sending" line becomes the stored event, where the id puts it.
    function confirm(item, ev) {
      var pending = item.li, li;
      if (!pending || !pending.parentNode) { return; }
      li = E.kindOf(ev).render(ev, me);
      pending.parentNode.replaceChild(li, pending);
      item.li = li;
      if (insertionPoint(ev.id, li) !== c.nextElement(li)) {
        log.insertBefore(li, insertionPoint(ev.id, li));
      }
      regroup(li);
      regroup(c.nextElement(li));
    }

    // A send was stored (its ack, or the answer to its POST).
    function sent(item, ev) {
      if (ev.id <= lastId || shown[ev.id]) {
        removeLine(item.li);   // the stream showed it already
      } else {
        shown[ev.id] = true;
        confirm(item, ev);
      }
    }

    // An ack for an item this page no longer has (sent before a reload, or matched already).
    function stray(ev) {
      var kind = E.kindOf(ev);
      if (kind.apply) {
        applyAction(ev, kind);
      } else if (ev.id > lastId && !shown[ev.id]) {
        shown[ev.id] = true;
        insertEvent(kind.render(ev, me));
      }
    }

    // A send the server refused: say why, with Retry / Edit / Discard.
    function failed(item, message) {
      var li = item.li, fail, actions;
      if (!li) { return; }
      fail = li.getElementsByTagName("p")[1];
      c.addClass(li, "failed");
      label(item, t("send.not.sent"));
      c.empty(fail);
      fail.setAttribute("role", "alert");
      fail.appendChild(c.make("span", "visually-hidden", t("send.not.sent.prefix")));
      fail.appendChild(c.make("span", "fail-text", message));
      actions = c.make("span", "fail-actions");
      actions.appendChild(c.button(t("send.retry"), "link-button retry", function () {
        c.show(fail, false);
        c.removeClass(li, "failed");
        hooks.outbox().retry(item);
        hooks.focusComposer();
      }));
      actions.appendChild(c.button(t("send.edit"), "link-button edit", function () {
        hooks.outbox().forget(item);
        removeLine(li);
        hooks.editFailedSend(item);
      }));
      actions.appendChild(c.button(t("send.discard"), "link-button discard", function () {
        hooks.outbox().forget(item);
        removeLine(li);
        hooks.focusComposer();
        hooks.outbox().flush();
      }));
      fail.appendChild(actions);
      c.show(fail, true);
      regroup(li);
      regroup(c.nextElement(li));
    }

    /* ---- start: the events the page came with */

    function start(events) {
      var i, ev, kind;
      c.empty(log);   // the <noscript> snapshot
      for (i = 0; i < events.length; i++) {
        ev = events[i];
        if (!ev || typeof ev.id !== "string") { continue; }
        kind = E.kindOf(ev);
        if (kind.render) { log.appendChild(kind.render(ev, me)); }
        if (ev.id > lastId) { lastId = ev.id; }
      }
      regroupAll();
      c.on(scroller, "scroll", function () {
        if (c.isShown(jumpBtn) && atBottom()) { c.show(jumpBtn, false); }
      });
    }

    return {
      start: start,
      receive: receive,
      sent: sent,
      stray: stray,
      failed: failed,
      label: label,
      addPending: addPending,
      removePending: removePending,
      held: held,
      heldMessages: heldMessages,
      refresh: function (li) { E.fillMessage(li, li.chatappMessage, me); },
      regroupAll: regroupAll,
      lastId: function () { return lastId; },
      atBottom: atBottom,
      scrollToBottom: scrollToBottom
    };
  };
}());
