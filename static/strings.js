/*
 * chatapp browser client: every text the page shows a person, in one table.
 *
 * Loaded first. Every other file asks for its words through chatapp.t("key", {name: v}),
 * never with a literal string, so that translating the page is a change to this file alone
 * (a locale replaces STRINGS; the keys stay). "{name}" in a string is replaced by the value
 * of that parameter; the result is plain text and is always put in the page as text
 * (textContent), never as markup.
 *
 * Plain ES5 (tests/test_es5.py). The trap: a key missing here shows the key itself, so a
 * typo is visible on the page rather than silently blank.
 */
(function () {
  "use strict";

  var chatapp = window.chatapp = window.chatapp || {};

  var STRINGS = {
    // connection status (bar at the top)
    "status.websocket": "WebSocket",
    "status.longpoll": "Long-polling",
    "status.longpoll.fellback": "Long-polling (WebSocket unavailable)",
    "status.connecting": "connecting\u2026",
    "status.connected": "connected",
    "status.reconnecting": "reconnecting",
    "status.offline": "offline",
    "status.line": "{how} \u00b7 {what}",
    "status.retry.offline": " \u2014 retrying in {n} s",
    "status.retry": " in {n} s",

    // notices
    "notice.leave.failed": "Could not reach the server to leave; try again.",
    "notice.bad.cursor": "The server refused our position in the conversation; retrying.",
    "notice.server.error": "The server reported an error.",
    "notice.action.failed": "That did not work: {message}",

    // events in the log
    "event.joined": "joined",
    "event.left": "left",
    "event.unknown": "did something this page does not know how to show ({type})",
    "event.moderation": "{action} {subject}",
    "event.moderation.mute": "muted {subject}",
    "event.moderation.unmute": "unmuted {subject}",
    "event.moderation.kick": "removed {subject} from the room",
    "event.moderation.ban": "banned {subject}",
    "event.moderation.unban": "lifted the ban on {subject}",
    "event.moderation.slow_mode": "changed slow mode",
    "event.moderation.delete": "deleted a message",
    "message.deleted": "message deleted",
    "message.edited": "(edited)",
    "message.edited.at": "edited {time}",
    "reply.to": "Reply to {nick}:",
    "reply.deleted": "message deleted",
    "reply.missing": "Original message",
    "reactions.label": "Reactions",
    "reaction.chip": "{emoji} {count}: {who}",
    "reaction.chip.mine": "{emoji} {count}: {who} (including you; press to remove yours)",

    // sending
    "send.sending": "sending\u2026",
    "send.waiting": "waiting for connection\u2026",
    "send.retrying": "not sent yet \u2014 retrying\u2026",
    "send.not.sent": "not sent",
    "send.not.sent.prefix": "Not sent: ",
    "send.too.large": "The message is too large.",
    "send.too.fast": "You are sending too fast; wait a moment.",
    "send.refused.403": "The server refused the message (403).",
    "send.refused": "The server refused the message ({status}).",
    "send.retry": "Retry",
    "send.edit": "Edit",
    "send.discard": "Discard",

    // actions on a message
    "action.toolbar": "Actions for the message by {nick}",
    "action.reply": "Reply",
    "action.reply.label": "Reply to {nick}",
    "action.react": "React",
    "action.react.label": "React to the message by {nick}",
    "action.edit": "Edit",
    "action.edit.label": "Edit your message",
    "action.delete": "Delete",
    "action.delete.label": "Delete your message",
    "picker.label": "Choose a reaction",
    "picker.other": "Other emoji",
    "picker.add": "Add",
    "picker.close": "Close",
    "picker.not.one": "A reaction is one emoji.",
    "picker.emoji.label": "React with {emoji}",
    "edit.label": "New text of your message",
    "edit.hint": "Enter to save \u00b7 Escape to cancel",
    "edit.save": "Save",
    "edit.cancel": "Cancel",
    "edit.saving": "saving\u2026",
    "edit.empty": "The message is empty.",
    "delete.confirm": "Delete this message for everyone?",
    "delete.yes": "Delete",
    "delete.no": "Cancel",

    // what the live region says about changes (additions are read from the log itself)
    "announce.edited": "{nick} edited a message: {text}",
    "announce.deleted": "{nick} deleted a message",
    "announce.reacted": "{nick} reacted {emoji}",
    "announce.unreacted": "{nick} removed the reaction {emoji}",
    "announce.replying": "Replying to {nick}. Escape cancels.",
    "announce.reply.cancelled": "Reply cancelled.",
    "announce.editing": "Editing your message. Enter saves, Escape cancels.",
    "announce.edit.cancelled": "Edit cancelled.",
    "announce.delete.cancelled": "Not deleted.",
    "announce.original.missing": "The original message is no longer in this room's history.",

    // composer
    "composer.too.long": "A message can be at most {max} characters long; this one has {n}.",
    "composer.counter": "{n} / {max}",
    "composer.replying": "Replying to {nick}",
    "composer.reply.cancel": "Cancel reply",

    // older history
    "older.load": "Load older messages",
    "older.loading": "Loading\u2026",
    "older.failed": "Could not load older messages \u2014 try again",

    // people
    "people.you": " (you)",

    // moderation (moderation.js): the lines in the log, the menu on a nickname, the notices
    "event.moderation.minutes": " for {n} min",
    "event.moderation.seconds": " for {n} s",
    "event.moderation.slow.on": "set slow mode: one message every {n} s",
    "event.moderation.slow.off": "ended slow mode",
    "event.moderation.reason": ": {reason}",
    "mod.menu.label": "Moderate {nick}",
    "mod.reason": "Reason (optional)",
    "mod.mute10": "Mute for 10 min",
    "mod.mute": "Mute until unmuted",
    "mod.unmute": "Unmute",
    "mod.kick": "Remove from the room",
    "mod.ban1d": "Ban for a day",
    "mod.ban": "Ban for good",
    "mod.unban": "Lift the ban",
    "mod.close": "Close",
    "mod.failed": "That did not work: {message}",
    "mod.kicked": "A moderator removed you from this room. You may come back.",
    "mod.banned": "You are banned from this room: {message}",
    "mod.muted": "You are muted here: {message}",
    "mod.rejoin": "Come back",
    "mod.settings": "Room settings",
    "mod.moderators": "Moderators",
    "mod.none": "none yet",
    "mod.remove": "Remove",
    "mod.add": "Add moderator",
    "mod.add.nick": "Registered nickname",
    "mod.slow": "Slow mode",
    "mod.slow.off": "off",
    "mod.slow.n": "one message every {n} s",
    "mod.slow.set": "Set"
  };

  chatapp.STRINGS = STRINGS;

  // The text for key with {name} placeholders filled in from params.
  chatapp.t = function (key, params) {
    var text = STRINGS.hasOwnProperty(key) ? STRINGS[key] : key;
    if (!params) { return text; }
    return text.replace(/\{([a-z]+)\}/g, function (whole, name) {
      return params.hasOwnProperty(name) ? String(params[name]) : whole;
    });
  };
}());
