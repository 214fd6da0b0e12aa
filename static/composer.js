/*
 * chatapp browser client: the composer. Writing a message (Enter sends, Shift+Enter is a
 * new line), the character counter, replying (a bar above the field; Escape cancels), and
 * Up arrow in an empty composer to edit your last message.
 *
 * The limits are the server's (ctx.limits: max_text, max_preview, from chatapp/rules.py
 * through the page data), counted in code points as the server counts.
 *
 * chatapp.Composer(ctx, hooks) -> {start, replyTo, value, setDraft, putBack, focus, clear}
 * hooks: outbox(), view(), actions(), announce(text).
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var c = chatapp.core;
  var t = chatapp.t;

  var COUNTER_SHARE = 0.9;         // show the character counter from 90% of the limit on

  chatapp.Composer = function (ctx, hooks) {
    var form = ctx.form;
    var input = ctx.input;
    var counter = ctx.counter;
    var error = ctx.composerError;
    var max = ctx.limits.max_text;
    var previewChars = ctx.limits.max_preview;   // a pending reply quotes what the server will
    var replying = null;     // the message being answered: {id, nick, text}
    var bar = null, barText = null;

    function autosize() {
      var extra;
      input.style.height = "";
      if (input.scrollHeight > input.clientHeight) {
        extra = input.offsetHeight - input.clientHeight;
        input.style.height = (input.scrollHeight + extra) + "px";
      }
    }

    function changed() {
      var length = c.countChars(c.trim(input.value));
      autosize();
      if (length >= Math.floor(max * COUNTER_SHARE)) {
        c.setText(counter, chatapp.tn("composer.counter", length, { max: max }));
        c.toggleClass(counter, "over", length > max);
        c.show(counter, true);
      } else {
        c.show(counter, false);
      }
      if (length <= max) { c.show(error, false); }
    }

    /* ---- replying */

    function makeBar() {
      bar = c.make("div", "reply-bar");
      bar.id = "reply-bar";
      barText = c.make("span", "reply-bar-text");
      bar.appendChild(barText);
      bar.appendChild(c.button(t("composer.reply.cancel"), "link-button reply-cancel", function () {
        cancelReply(true);
        input.focus();
      }));
      c.show(bar, false);
      form.insertBefore(bar, form.firstChild);
    }

    function replyTo(msg) {
      if (!msg || msg.deleted) { return; }
      replying = { id: msg.id, nick: msg.nick, text: msg.text || "" };
      c.setText(barText, t("composer.replying", { nick: msg.nick }) + ": " +
        replying.text.slice(0, previewChars));
      c.show(bar, true);
      input.focus();
      hooks.announce(t("announce.replying", { nick: msg.nick }));
    }

    function cancelReply(say) {
      if (!replying) { return; }
      replying = null;
      c.show(bar, false);
      if (say) { hooks.announce(t("announce.reply.cancelled")); }
    }

    /* ---- sending */

    function submit() {
      var text = c.trim(input.value), length = c.countChars(text), fields, item;
      if (!text) { return; }
      if (length > max) {
        c.setText(error, chatapp.tn("composer.too.long", max, { length: length }));
        c.show(error, true);
        return;
      }
      c.show(error, false);
      fields = { kind: "send", text: text };
      if (replying) {
        fields.reply_to = replying.id;
        fields.reply_preview = { nick: replying.nick, text: replying.text.slice(0, previewChars) };
      }
      item = hooks.outbox().add(fields);
      if (hooks.sent) { hooks.sent(item); }   // typing.js: my next keystroke signals at once
      hooks.view().addPending(item);
      input.value = "";
      cancelReply(false);
      changed();
      hooks.view().scrollToBottom();
      hooks.outbox().flush();
    }

    function onKey(e) {
      var key = e.key || "";
      if ((key === "Enter" || e.keyCode === 13) && !e.shiftKey && !e.altKey &&
          !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        submit();
      } else if ((key === "ArrowUp" || key === "Up" || e.keyCode === 38) && !input.value &&
                 !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey) {
        if (hooks.actions().editLast()) { e.preventDefault(); }
      } else if ((key === "Escape" || key === "Esc" || e.keyCode === 27) && replying) {
        e.preventDefault();
        cancelReply(true);
      }
    }

    function start() {
      makeBar();
      c.on(form, "submit", function (e) {
        e.preventDefault();
        submit();
      });
      c.on(input, "keydown", onKey);
      c.on(input, "input", changed);
      // The composer is disabled in the HTML: without the script it could not send.
      input.disabled = false;
      if (ctx.sendBtn) { ctx.sendBtn.disabled = false; }
    }

    return {
      start: start,
      replyTo: replyTo,
      changed: changed,
      value: function () { return input.value; },
      setDraft: function (draft) {
        if (typeof draft === "string" && !input.value) { input.value = draft; }
      },
      // A failed send, to be edited: its text back in the composer, after any draft.
      putBack: function (text) {
        var draft = c.trim(input.value);
        input.value = draft ? draft + "\n" + text : text;
        changed();
        input.focus();
      },
      focus: function () { input.focus(); },
      clear: function () { input.value = ""; }
    };
  };
}());
