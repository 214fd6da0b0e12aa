/*
 * chatapp browser client: every text the page shows a person, in one table, in English, and
 * the one place that names the client's English source strings.
 *
 * Loaded after i18n.js and before every other file. Every other file asks for its words by
 * key: chatapp.t("key", {name: v}), or chatapp.tn("key", n, {name: v}) where a count is
 * shown (the plural form is chosen for n, and {n} is filled in). Never a literal string.
 *
 * Each value here is a marker call with literal strings: tr("text") for a message,
 * trn("one", "many") for a plural one. The markers are what the catalogue extraction reads
 * (python -m chatapp.web.extract, keywords tr/trn) and they look the text up in the reader's
 * language (window.chatappI18n, static/i18n.js); tests/test_i18n.py fails on a value that is
 * not a marker call with literals, and on a key asked for elsewhere that is not here.
 * "{name}" in a string is replaced by the value of that parameter; the result is plain text
 * and is always put in the page as text (textContent), never as markup.
 *
 * Plain ES5 (tests/test_es5.py). The traps: a key missing here shows the key itself, so a
 * typo is visible on the page rather than silently blank; a string built from pieces
 * (tr("a" + b)) is not extracted and is never translated.
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};
  var i18n = window.chatappI18n || null;

  // The text in the reader's language, placeholders left for chatapp.t to fill. Without
  // i18n.js (a page that does not load it) the English source.
  function tr(text) {
    return i18n ? i18n.t(text) : text;
  }

  // A plural entry: a function of the count that returns the form for it, {n} filled.
  function trn(one, many) {
    return function (n, params) {
      var all = {}, name;
      if (i18n) { return i18n.tn(one, many, n, params); }
      if (params) { for (name in params) { if (params.hasOwnProperty(name)) { all[name] = params[name]; } } }
      all.n = n;
      return fill(n === 1 ? one : many, all);
    };
  }

  function fill(text, params) {
    if (!params) { return text; }
    return text.replace(/\{([a-z]+)\}/g, function (whole, name) {
      return params.hasOwnProperty(name) ? String(params[name]) : whole;
    });
  }

  var STRINGS = {
    // connection status (bar at the top)
    "status.websocket": tr("WebSocket"),
    "status.longpoll": tr("Long-polling"),
    "status.longpoll.fellback": tr("Long-polling (WebSocket unavailable)"),
    "status.connecting": tr("connecting\u2026"),
    "status.connected": tr("connected"),
    "status.reconnecting": tr("reconnecting"),
    "status.offline": tr("offline"),
    "status.line": tr("{how} \u00b7 {what}"),
    "status.retry.offline": trn(" \u2014 retrying in {n} second", " \u2014 retrying in {n} seconds"),
    "status.retry": trn(" in {n} second", " in {n} seconds"),

    // notices
    "notice.leave.failed": tr("Could not reach the server to leave; try again."),
    "notice.bad.cursor": tr("The server refused our position in the conversation; retrying."),
    "notice.server.error": tr("The server reported an error."),
    "notice.action.failed": tr("That did not work: {message}"),

    // events in the log
    "event.joined": tr("joined"),
    "event.left": tr("left"),
    "event.unknown": tr("did something this page does not know how to show ({type})"),
    "event.moderation": tr("{action} {subject}"),
    "event.moderation.mute": tr("muted {subject}"),
    "event.moderation.unmute": tr("unmuted {subject}"),
    "event.moderation.kick": tr("removed {subject} from the room"),
    "event.moderation.ban": tr("banned {subject}"),
    "event.moderation.unban": tr("lifted the ban on {subject}"),
    "event.moderation.slow_mode": tr("changed slow mode"),
    "event.moderation.delete": tr("deleted a message"),
    "message.deleted": tr("message deleted"),
    "message.edited": tr("(edited)"),
    "message.edited.at": tr("edited {time}"),
    "reply.to": tr("Reply to {nick}:"),
    "reply.deleted": tr("message deleted"),
    "reply.missing": tr("Original message"),
    "reactions.label": tr("Reactions"),
    "reaction.chip": tr("{emoji} {count}: {who}"),
    "reaction.chip.mine": tr("{emoji} {count}: {who} (including you; press to remove yours)"),

    // sending
    "send.sending": tr("sending\u2026"),
    "send.waiting": tr("waiting for connection\u2026"),
    "send.retrying": tr("not sent yet \u2014 retrying\u2026"),
    "send.not.sent": tr("not sent"),
    "send.not.sent.prefix": tr("Not sent: "),
    "send.too.large": tr("The message is too large."),
    "send.too.fast": tr("You are sending too fast; wait a moment."),
    "send.refused.403": tr("The server refused the message (403)."),
    "send.refused": tr("The server refused the message ({status})."),
    "send.retry": tr("Retry"),
    "send.edit": tr("Edit"),
    "send.discard": tr("Discard"),

    // actions on a message
    "action.toolbar": tr("Actions for the message by {nick}"),
    "action.reply": tr("Reply"),
    "action.reply.label": tr("Reply to {nick}"),
    "action.react": tr("React"),
    "action.react.label": tr("React to the message by {nick}"),
    "action.edit": tr("Edit"),
    "action.edit.label": tr("Edit your message"),
    "action.delete": tr("Delete"),
    "action.delete.label": tr("Delete your message"),
    "action.delete.moderator.label": tr("Delete {nick}'s message (as a moderator)"),
    "picker.label": tr("Choose a reaction"),
    "picker.other": tr("Other emoji"),
    "picker.add": tr("Add"),
    "picker.close": tr("Close"),
    "picker.not.one": tr("A reaction is one emoji."),
    "picker.emoji.label": tr("React with {emoji}"),
    "edit.label": tr("New text of your message"),
    "edit.hint": tr("Enter to save \u00b7 Escape to cancel"),
    "edit.save": tr("Save"),
    "edit.cancel": tr("Cancel"),
    "edit.saving": tr("saving\u2026"),
    "edit.empty": tr("The message is empty."),
    "delete.confirm": tr("Delete this message for everyone?"),
    "delete.yes": tr("Delete"),
    "delete.no": tr("Cancel"),

    // what the live region says about changes (additions are read from the log itself)
    "announce.edited": tr("{nick} edited a message: {text}"),
    "announce.deleted": tr("{nick} deleted a message"),
    "announce.reacted": tr("{nick} reacted {emoji}"),
    "announce.unreacted": tr("{nick} removed the reaction {emoji}"),
    "announce.replying": tr("Replying to {nick}. Escape cancels."),
    "announce.reply.cancelled": tr("Reply cancelled."),
    "announce.editing": tr("Editing your message. Enter saves, Escape cancels."),
    "announce.edit.cancelled": tr("Edit cancelled."),
    "announce.delete.cancelled": tr("Not deleted."),
    "announce.original.missing": tr("The original message is no longer in this room's history."),

    // composer
    "composer.too.long": trn("A message can be at most {n} character long; this one has {length}.",
                             "A message can be at most {n} characters long; this one has {length}."),
    // TRANSLATORS: the character counter under the box: {n} typed of at most {max}.
    "composer.counter": trn("{n} / {max}", "{n} / {max}"),
    "composer.replying": tr("Replying to {nick}"),
    "composer.reply.cancel": tr("Cancel reply"),

    // older history
    "older.load": tr("Load older messages"),
    "older.loading": tr("Loading\u2026"),
    "older.failed": tr("Could not load older messages \u2014 try again"),

    // the page's title while unread messages arrive unseen ({title}: "#room \u2014 chatapp")
    // TRANSLATORS: the tab's title: {n} messages arrived unread, {title} is the page's own.
    "title.unread": trn("({n}) {title}", "({n}) {title}"),

    // people
    "people.you": tr(" (you)"),

    // who is typing (the line under the conversation)
    "typing.one": tr("{a} is typing\u2026"),
    "typing.two": tr("{a} and {b} are typing\u2026"),
    "typing.three": tr("{a}, {b} and {c} are typing\u2026"),
    "typing.many": tr("{a}, {b} and {n} more are typing\u2026"),

    // unread messages and mentions (the title's unread count is "title.unread" above)
    "title.mentions": tr("({n}, @{m}) {title}"),
    "unread.divider": tr("New"),
    "notify.title": tr("{nick} mentioned you in #{room}"),

    // the rooms sidebar, and a room opened from it (as templates/room.html says it)
    "room.title": tr("#{room} \u2014 chatapp"),
    "room.messages.in": tr("Messages in #{room}"),
    "room.message.label": tr("Message #{room}"),
    "rooms.mentions": tr("@{n}"),
    "rooms.mentions.label": tr("mentions of you: {n}"),
    "rooms.unread.label": tr("unread: {n}"),
    "rooms.people": tr("here: {n}"),
    "rooms.bad.name": tr("Room names are 1-64 letters, digits, - and _."),

    // the search box (search.js)
    "search.open": tr("Search"),
    "search.shortcut": tr("Search (/ or Ctrl+K)"),
    "search.label": tr("Search messages in #{room}"),
    "search.placeholder": tr("Search #{room} \u2014 words, \"a phrase\", from:nick"),
    "search.close": tr("Close"),
    "search.more": tr("More results"),
    "search.results": tr("Search results"),
    "search.searching": tr("Searching\u2026"),
    "search.failed": tr("Search failed \u2014 try again."),
    "search.none": tr("No messages match."),
    "search.context.loading": tr("Loading the conversation around it\u2026"),
    "search.context.failed": tr("Could not load that part of the conversation."),

    // moderation (moderation.js, and how events.js tells of an action)
    "event.moderation.minutes": tr(" for {n} min"),
    "event.moderation.seconds": tr(" for {n} s"),
    "event.moderation.slow.on": tr("set slow mode: one message every {n} s"),
    "event.moderation.slow.off": tr("ended slow mode"),
    "event.moderation.reason": tr(": {reason}"),
    "mod.menu.label": tr("Moderate {nick}"),
    "mod.reason": tr("Reason (optional)"),
    "mod.mute10": tr("Mute for 10 min"),
    "mod.mute": tr("Mute until unmuted"),
    "mod.unmute": tr("Unmute"),
    "mod.kick": tr("Remove from the room"),
    "mod.ban1d": tr("Ban for a day"),
    "mod.ban": tr("Ban for good"),
    "mod.unban": tr("Lift the ban"),
    "mod.close": tr("Close"),
    "mod.failed": tr("That did not work: {message}"),
    "mod.kicked": tr("A moderator removed you from this room. You may come back."),
    "mod.banned": tr("You are banned from this room: {message}"),
    "mod.muted": tr("You are muted here: {message}"),
    "mod.rejoin": tr("Come back"),
    "mod.settings": tr("Room settings"),
    "mod.moderators": tr("Moderators"),
    "mod.none": tr("none yet"),
    "mod.remove": tr("Remove"),
    "mod.add": tr("Add moderator"),
    "mod.add.nick": tr("Registered nickname"),
    "mod.slow": tr("Slow mode"),
    "mod.slow.off": tr("off"),
    "mod.slow.n": tr("one message every {n} s"),
    "mod.slow.set": tr("Set"),

    // the "Your nickname" panel (account.js)
    "account.registered": tr("\u201c{nick}\u201d is registered: log in with it on any device. Deleting the account frees the nickname."),
    "account.unregistered": tr("Register \u201c{nick}\u201d with a password so that nobody else can take it."),
    "account.register": tr("Register"),
    "account.delete": tr("Delete account"),
    "account.unreachable": tr("The server could not be reached; try again."),
    "account.refused": tr("The server refused the request ({status}).")
  };

  chatapp.STRINGS = STRINGS;

  // The text for key with {name} placeholders filled in from params. A plural entry asked
  // for without a count takes params.n (or the "many" form's count, 2).
  chatapp.t = function (key, params) {
    var entry = STRINGS.hasOwnProperty(key) ? STRINGS[key] : key;
    if (typeof entry === "function") {
      return entry(params && typeof params.n === "number" ? params.n : 2, params);
    }
    return fill(entry, params);
  };

  // The form of a plural entry for the count n, {n} and params filled in. A key that is not
  // plural is shown as chatapp.t shows it, with {n} filled.
  chatapp.tn = function (key, n, params) {
    var entry = STRINGS.hasOwnProperty(key) ? STRINGS[key] : key;
    var all = {}, name;
    if (typeof entry === "function") { return entry(n, params); }
    if (params) { for (name in params) { if (params.hasOwnProperty(name)) { all[name] = params[name]; } } }
    all.n = n;
    return fill(entry, all);
  };
}());
